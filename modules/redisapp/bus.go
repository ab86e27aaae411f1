package redisapp

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// bus carries events between gateways on one Redis pub/sub channel. Each
// message is "<origin>\x00<topic>\x00<payload>"; a gateway ignores its own.
// One subscription per process, opened with the first subscriber; go-redis
// re-establishes it after a break, and each re-establishment tells every
// subscriber that events may have been missed (onResync).
type bus struct {
	client  *redis.Client
	channel string
	origin  string
	logger  *zap.Logger
	circuit *circuit

	mu     sync.Mutex
	subs   map[string]map[int]*subscriber // by topic, by id
	nextID int
	ps     *redis.PubSub
	done   chan struct{}
}

type subscriber struct {
	onEvent  func(string)
	onResync func()
}

func newBus(client *redis.Client, channel string, logger *zap.Logger, c *circuit) *bus {
	var id [8]byte
	_, _ = rand.Read(id[:])
	return &bus{client: client, channel: channel, origin: hex.EncodeToString(id[:]), logger: logger, circuit: c,
		subs: map[string]map[int]*subscriber{}}
}

func (b *bus) encode(topic, payload string) string {
	return b.origin + "\x00" + topic + "\x00" + payload
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
	if b.ps == nil {
		b.ps = b.client.Subscribe(context.Background(), b.channel)
		b.done = make(chan struct{})
		go b.run(b.ps, b.done)
	}
	return func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		delete(b.subs[topic], id)
	}
}

// run delivers messages until the subscription is closed.
func (b *bus) run(ps *redis.PubSub, done chan struct{}) {
	defer close(done)
	subscribed := false
	for msg := range ps.ChannelWithSubscriptions() {
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind != "subscribe" {
				continue
			}
			if subscribed {
				b.logger.Warn("event subscription re-established after a break; dropping what may have missed an event")
				b.resync()
			}
			subscribed = true
		case *redis.Message:
			origin, rest, ok := strings.Cut(m.Payload, "\x00")
			if !ok || origin == b.origin {
				continue
			}
			topic, payload, ok := strings.Cut(rest, "\x00")
			if !ok {
				continue
			}
			b.deliver(topic, payload)
		}
	}
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
	b.mu.Lock()
	ps, done := b.ps, b.done
	b.ps = nil
	b.mu.Unlock()
	if ps != nil {
		_ = ps.Close()
		<-done
	}
}
