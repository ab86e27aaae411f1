package redisapp

import (
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// circuit stops calls to a Redis that just failed: for openFor after a
// failure every call fails at once; then a single call is let through, and
// its outcome closes the circuit or opens it again. Each change is logged
// once, however many requests pass.
type circuit struct {
	openFor time.Duration
	logger  *zap.Logger
	addr    string
	now     func() time.Time

	isOpen    atomic.Bool // the fast path: closed
	mu        sync.Mutex
	openUntil time.Time
	probing   bool
}

func newCircuit(openFor time.Duration, logger *zap.Logger, addr string) *circuit {
	return &circuit{openFor: openFor, logger: logger, addr: addr, now: time.Now}
}

// allow reports whether a call may be made now.
func (c *circuit) allow() bool {
	if !c.isOpen.Load() {
		return true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.isOpen.Load() {
		return true
	}
	if c.probing || c.now().Before(c.openUntil) {
		return false
	}
	c.probing = true
	return true
}

func (c *circuit) failed(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.isOpen.Load() {
		c.logger.Error("Redis is unavailable; calls stop for a while and each module applies its on_error policy",
			zap.String("address", c.addr), zap.Duration("retry_in", c.openFor), zap.Error(err))
		c.isOpen.Store(true)
	}
	c.openUntil = c.now().Add(c.openFor)
	c.probing = false
}

func (c *circuit) succeeded() {
	if !c.isOpen.Load() {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.isOpen.Load() {
		c.logger.Info("Redis is reachable again", zap.String("address", c.addr))
		c.isOpen.Store(false)
	}
	c.probing = false
}

// retryIn is how long until a call is let through again.
func (c *circuit) retryIn() time.Duration {
	if !c.isOpen.Load() {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return max(c.openUntil.Sub(c.now()), 0)
}
