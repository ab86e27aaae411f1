package testredis

import (
	"context"
	"strconv"
	"strings"
)

// ScriptCalls is how many scripts the server has run (EVALSHA and EVAL
// calls in INFO commandstats): the round trips a test counts.
func (s *Server) ScriptCalls(ctx context.Context) (int64, error) {
	c := s.Client()
	defer c.Close()
	info, err := c.Info(ctx, "commandstats").Result()
	if err != nil {
		return 0, err
	}
	var n int64
	for _, line := range strings.Split(info, "\n") {
		for _, cmd := range []string{"cmdstat_evalsha:calls=", "cmdstat_eval:calls="} {
			if rest, ok := strings.CutPrefix(strings.TrimSpace(line), cmd); ok {
				v, _, _ := strings.Cut(rest, ",")
				calls, err := strconv.ParseInt(v, 10, 64)
				if err != nil {
					return 0, err
				}
				n += calls
			}
		}
	}
	return n, nil
}
