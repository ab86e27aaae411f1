package dispense

import (
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestOptions(t *testing.T) {
	for in, want := range map[string]string{
		"api_x {\n a 1\n b\n zone z1\n zone z2\n}": "a b zone zone",
		"api_x":                  "",
		"api_x extra {\n a\n}":   "error: wrong argument count",
		"api_x {\n a 1\n a 2\n}": "error: a already specified",
		"api_x {\n bad\n}":       "error: unrecognized",
	} {
		d := caddyfile.NewTestDispenser(in)
		d.Next()
		var got []string
		err := Options(d, []string{"zone"}, func(opt string) error {
			if opt == "bad" {
				return d.Err("unrecognized")
			}
			got = append(got, opt)
			d.RemainingArgs()
			return nil
		})
		s := strings.Join(got, " ")
		if err != nil {
			s = "error: " + err.Error()
		}
		if s != want && !(strings.HasPrefix(want, "error: ") && strings.Contains(s, strings.TrimPrefix(want, "error: "))) {
			t.Errorf("%q: %q, want %q", in, s, want)
		}
	}
}
