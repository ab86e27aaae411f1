package redisapp

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
)

// Scripts of concurrent requests share round trips to Redis ("natural
// batching"): a call queues; a worker takes it together with every call
// that queued while the pipelines before it were in flight (up to
// maxBatch) and sends them as one pipeline. One request at a time still
// costs one round trip; under load, the write, the read, the pool checkout
// and its health check are shared by the batch. Each call stays its own
// EVALSHA: a script error fails that call only, and the batch is one Do
// (circuit and timeout) for all of them.
const (
	maxBatch     = 64   // calls per pipeline
	batchWorkers = 4    // pipelines in flight at once
	batchQueue   = 1024 // calls waiting for a worker
)

type scriptCall struct {
	script *redis.Script
	keys   []string
	args   []any
	reply  any
	err    error
	// answered: Redis ran the call (or refused its script); a later
	// failure of the batch does not change what it said
	answered bool
	done     chan struct{}
}

type batcher struct {
	conn  *conn
	calls chan *scriptCall
	quit  chan struct{}
	wg    sync.WaitGroup

	// for tests: pipelines sent and calls in them
	batches, batched atomic.Int64
}

func newBatcher(c *conn) *batcher {
	b := &batcher{conn: c, calls: make(chan *scriptCall, batchQueue), quit: make(chan struct{})}
	b.wg.Add(batchWorkers)
	for range batchWorkers {
		go b.work()
	}
	return b
}

// close stops the workers; calls still queued fail.
func (b *batcher) close() {
	close(b.quit)
	b.wg.Wait()
	for {
		select {
		case call := <-b.calls:
			call.err = ErrUnavailable
			close(call.done)
		default:
			return
		}
	}
}

// run queues one script call and waits for its reply (or ctx).
func (b *batcher) run(ctx context.Context, s *redis.Script, keys []string, args []any) (any, error) {
	call := &scriptCall{script: s, keys: keys, args: args, done: make(chan struct{})}
	select {
	case b.calls <- call:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-b.quit:
		return nil, ErrUnavailable
	}
	select {
	case <-call.done:
		return call.reply, call.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (b *batcher) work() {
	defer b.wg.Done()
	batch := make([]*scriptCall, 0, maxBatch)
	for {
		select {
		case call := <-b.calls:
			batch = append(batch[:0], call)
		case <-b.quit:
			return
		}
	fill:
		for len(batch) < maxBatch {
			select {
			case call := <-b.calls:
				batch = append(batch, call)
			default:
				break fill
			}
		}
		b.exec(batch)
		clear(batch) // let the calls go
	}
}

// exec sends one batch and hands every call its reply or the batch's error.
func (b *batcher) exec(batch []*scriptCall) {
	b.batches.Add(1)
	b.batched.Add(int64(len(batch)))
	err := b.conn.do(context.Background(), PurposeRateLimit, func(ctx context.Context, c redis.UniversalClient) error {
		return pipelineScripts(ctx, c, batch)
	})
	for _, call := range batch {
		if err != nil && !call.answered {
			call.reply, call.err = nil, err
		}
		close(call.done)
	}
}

// pipelineScripts runs each call's script by its hash in one pipeline.
// Calls that Redis answers NOSCRIPT (it restarted, failed over, or its
// scripts were flushed) are sent again with the script's source (EVAL,
// which also caches it on that server). In a cluster go-redis sends each
// call to its key's primary, and only those primaries that forgot the
// script see the source. A call that Redis answered keeps its answer when
// others of the batch were not (a cluster node that is down); the error
// returned is the batch's failure for the rest (the connection, a timeout).
func pipelineScripts(ctx context.Context, c redis.UniversalClient, batch []*scriptCall) error {
	pending := batch
	for attempt := 0; ; attempt++ {
		cmds := make([]*redis.Cmd, len(pending))
		_, perr := c.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, call := range pending {
				if attempt == 0 {
					cmds[i] = call.script.EvalSha(ctx, p, call.keys, call.args...)
				} else {
					cmds[i] = call.script.Eval(ctx, p, call.keys, call.args...)
				}
			}
			return nil
		})
		var err error // the first failure that is not an answer
		var again []*scriptCall
		for i, cmd := range cmds {
			cerr := cmd.Err()
			if cerr == nil && cmd.Val() == nil && perr != nil {
				cerr = perr // never sent (a script's nil is redis.Nil)
			}
			switch {
			case attempt == 0 && redis.HasErrorPrefix(cerr, "NOSCRIPT"):
				again = append(again, pending[i])
			case cerr == nil || errors.Is(cerr, redis.Nil) || isReply(cerr):
				pending[i].reply, pending[i].err, pending[i].answered = cmd.Val(), cerr, true
			case err == nil:
				err = cerr
			}
		}
		if err != nil || len(again) == 0 {
			return err
		}
		pending = again
	}
}

// isReply reports whether err is Redis's answer to one command (a script
// error, NOSCRIPT) rather than a failure of the connection.
func isReply(err error) bool {
	var reply redis.Error
	return errors.As(err, &reply)
}
