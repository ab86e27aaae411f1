package redisapp

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// bus carries events between gateways on one Redis pub/sub channel. Each
// message is "<origin>\x00<topic>\x00<payload>"; a gateway ignores its own.
//
// An event must not be lost silently: a subscriber that may have missed
// one is told (onResync) and drops what it cannot trust. Two ways to miss
// one, and what each side does:
//   - the subscription breaks, or Redis stops answering on it (frozen: the
//     connection stays open and nothing ever arrives, so go-redis never
//     notices). The subscriber pings on its subscription connection when it
//     has heard nothing for pingEvery; when nothing at all (no pong, no
//     message) came for pingEvery+pongWait, it resyncs, drops the
//     connection and subscribes again, and resyncs once more when the new
//     subscription is confirmed (what was cached meanwhile may have missed
//     an event too). go-redis's own reconnections resync the same way.
//   - a publish fails (a timeout, the publish circuit open) while the other
//     gateways' subscriptions stay up. The publisher keeps the event and
//     sends it again in the background, without a circuit, until Redis
//     takes it (backing off to 1 s); past maxPending events it sends one
//     resync event instead, which makes every other gateway resync. An
//     event may so arrive twice, which invalidation tolerates.
//
// Together: once Redis answers again, every gateway has either received
// every event or dropped what it held, within about a second (the retry
// backoff, or the subscription check).
type bus struct {
	conn    *conn
	channel string
	origin  string
	logger  *zap.Logger

	mu     sync.Mutex
	subs   map[string]map[int]*subscriber // by topic, by id
	nextID int
	quit   chan struct{}
	done   chan struct{} // the subscription loop ended

	pmu      sync.Mutex
	pending  []event // publishes to send again
	overflow bool    // pending overflowed: send a resync instead
	retrying bool
	pdone    chan struct{}
}

type event struct{ topic, payload string }

type subscriber struct {
	onEvent  func(string)
	onResync func()
}

// resyncTopic asks every other gateway to resync (never a module's topic:
// topics are non-empty).
const resyncTopic = ""

var (
	pingEvery  = 500 * time.Millisecond
	pongWait   = time.Second
	maxPending = 256
)

func newBus(c *conn, channel string, logger *zap.Logger) *bus {
	var id [8]byte
	_, _ = rand.Read(id[:])
	return &bus{conn: c, channel: channel, origin: hex.EncodeToString(id[:]), logger: logger,
		subs: map[string]map[int]*subscriber{}, quit: make(chan struct{})}
}

func (b *bus) encode(topic, payload string) string {
	return b.origin + "\x00" + topic + "\x00" + payload
}

// publish sends an event now, or keeps it to send again (see bus).
func (b *bus) publish(ctx context.Context, topic, payload string) error {
	err := b.conn.do(ctx, PurposePublish, func(ctx context.Context, c redis.UniversalClient) error {
		return c.Publish(ctx, b.channel, b.encode(topic, payload)).Err()
	})
	if err != nil {
		b.keep(event{topic, payload})
	}
	return err
}

func (b *bus) keep(e event) {
	b.pmu.Lock()
	defer b.pmu.Unlock()
	if len(b.pending) >= maxPending {
		b.pending, b.overflow = nil, true
	} else if !b.overflow {
		b.pending = append(b.pending, e)
	}
	if !b.retrying {
		b.retrying = true
		b.pdone = make(chan struct{})
		go b.resend(b.pdone)
	}
}

// resend sends the kept events until Redis takes them all.
func (b *bus) resend(done chan struct{}) {
	defer close(done)
	wait := 50 * time.Millisecond
	for {
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-b.quit:
			t.Stop()
			return
		}
		wait = min(wait*2, time.Second)
		b.pmu.Lock()
		batch, overflow := b.pending, b.overflow
		if overflow {
			batch = []event{{resyncTopic, ""}}
		}
		b.pmu.Unlock()
		err := b.conn.do(context.Background(), PurposeBackground, func(ctx context.Context, c redis.UniversalClient) error {
			_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
				for _, e := range batch {
					p.Publish(ctx, b.channel, b.encode(e.topic, e.payload))
				}
				return nil
			})
			return err
		})
		if err != nil {
			continue
		}
		b.pmu.Lock()
		if overflow {
			b.overflow = false
		} else {
			b.pending = b.pending[len(batch):]
		}
		if len(b.pending) == 0 && !b.overflow {
			b.pending, b.retrying = nil, false
			b.pmu.Unlock()
			b.logger.Info("events that could not be published were sent late", zap.Int("events", len(batch)))
			return
		}
		b.pmu.Unlock()
		wait = 50 * time.Millisecond
	}
}

func (b *bus) subscribe(topic string, onEvent func(string), onResync func()) (cancel func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.subs[topic] == nil {
		b.subs[topic] = map[int]*subscriber{}
	}
	id := b.nextID
	b.nextID++
	b.subs[topic][id] = &subscriber{onEvent: onEvent, onResync: onResync}
	if b.done == nil {
		b.done = make(chan struct{})
		go b.run(b.done)
	}
	return func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		delete(b.subs[topic], id)
	}
}

// run keeps one subscription alive until the bus closes.
func (b *bus) run(done chan struct{}) {
	defer close(done)
	for replaced := false; ; replaced = true {
		if !b.listen(replaced) {
			return
		}
	}
}

// listen subscribes and delivers until the bus closes (false) or the
// subscription stops answering (true: subscribe again).
func (b *bus) listen(replaced bool) bool {
	ps := b.conn.client.Subscribe(context.Background(), b.channel)
	msgs := make(chan any)
	stop := make(chan struct{})
	go func() {
		for {
			msg, err := ps.Receive(context.Background())
			if err != nil {
				msg = err
			}
			select {
			case msgs <- msg:
			case <-stop:
				return
			}
			if err != nil {
				// go-redis reconnects on the next Receive
				select {
				case <-time.After(100 * time.Millisecond):
				case <-stop:
					return
				}
			}
		}
	}()
	defer func() {
		close(stop)
		_ = ps.Close()
	}()
	subscribed := false
	heard := time.Now()
	pinged := false
	tick := time.NewTicker(pingEvery / 2)
	defer tick.Stop()
	for {
		select {
		case <-b.quit:
			return false
		case <-tick.C:
			silent := time.Since(heard)
			if silent > pingEvery+pongWait {
				b.logger.Warn("the event subscription stopped answering; dropping what may have missed an event and subscribing again",
					zap.Duration("silent", silent.Round(time.Millisecond)))
				b.resync()
				return true
			}
			if silent > pingEvery && !pinged {
				pinged = true
				go func() { // a write to a frozen server may block
					ctx, cancel := context.WithTimeout(context.Background(), pongWait)
					defer cancel()
					_ = ps.Ping(ctx, "restgate")
				}()
			}
		case msg := <-msgs:
			switch m := msg.(type) {
			case error:
				continue // not heard: a failing connection is silence
			case *redis.Subscription:
				if m.Kind != "subscribe" {
					break
				}
				if subscribed || replaced {
					b.logger.Warn("event subscription re-established after a break; dropping what may have missed an event")
					b.resync()
				}
				subscribed = true
			case *redis.Message:
				b.receive(m.Payload)
			}
			heard, pinged = time.Now(), false
		}
	}
}

func (b *bus) receive(msg string) {
	origin, rest, ok := strings.Cut(msg, "\x00")
	if !ok || origin == b.origin {
		return
	}
	topic, payload, ok := strings.Cut(rest, "\x00")
	if !ok {
		return
	}
	if topic == resyncTopic {
		b.logger.Warn("another gateway could not publish some events; dropping what may have missed one")
		b.resync()
		return
	}
	b.deliver(topic, payload)
}

func (b *bus) deliver(topic, payload string) {
	b.mu.Lock()
	subs := make([]*subscriber, 0, len(b.subs[topic]))
	for _, s := range b.subs[topic] {
		subs = append(subs, s)
	}
	b.mu.Unlock()
	for _, s := range subs {
		s.onEvent(payload)
	}
}

func (b *bus) resync() {
	b.mu.Lock()
	var subs []*subscriber
	for _, byID := range b.subs {
		for _, s := range byID {
			subs = append(subs, s)
		}
	}
	b.mu.Unlock()
	for _, s := range subs {
		if s.onResync != nil {
			s.onResync()
		}
	}
}

func (b *bus) close() {
	close(b.quit)
	b.mu.Lock()
	done := b.done
	b.mu.Unlock()
	if done != nil {
		<-done
	}
	b.pmu.Lock()
	pdone := b.pdone
	b.pmu.Unlock()
	if pdone != nil {
		<-pdone
	}
}
