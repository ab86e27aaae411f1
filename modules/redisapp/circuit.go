package redisapp

import (
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// circuit stops calls of one purpose to a Redis that just failed them: for
// openFor after a failure every call fails at once; then a single call
// (the probe) is let through, and its outcome alone closes the circuit or
// opens it again. A call that was let through before the circuit opened
// cannot close it (it says nothing about Redis now), and a call whose
// caller gave up (context.Canceled) is neither a success nor a failure.
// Each change is logged once, however many requests pass.
type circuit struct {
	openFor time.Duration
	logger  *zap.Logger
	addr    string
	purpose Purpose
	now     func() time.Time

	isOpen    atomic.Bool // the fast path: closed
	mu        sync.Mutex
	openUntil time.Time
	probing   bool
}

func newCircuit(openFor time.Duration, logger *zap.Logger, addr string, purpose Purpose) *circuit {
	return &circuit{openFor: openFor, logger: logger, addr: addr, purpose: purpose, now: time.Now}
}

// allow reports whether a call may be made now, and whether it is the
// probe of an open circuit.
func (c *circuit) allow() (ok, probe bool) {
	if !c.isOpen.Load() {
		return true, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.isOpen.Load() {
		return true, false
	}
	if c.probing || c.now().Before(c.openUntil) {
		return false, false
	}
	c.probing = true
	return true, true
}

// failed: a call that Redis did not answer in time. Only a call of the
// closed circuit or the probe (re)opens it: a straggler from before the
// opening would push the retry further out for nothing.
func (c *circuit) failed(probe bool, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.isOpen.Load() && !probe {
		return
	}
	if !c.isOpen.Load() {
		c.logger.Error("Redis is unavailable; calls stop for a while and each module applies its on_error policy",
			zap.String("address", c.addr), zap.String("purpose", string(c.purpose)), zap.Duration("retry_in", c.openFor), zap.Error(err))
		c.isOpen.Store(true)
	}
	c.openUntil = c.now().Add(c.openFor)
	c.probing = false
}

// succeeded: Redis answered. Only the probe closes an open circuit.
func (c *circuit) succeeded(probe bool) {
	if !c.isOpen.Load() || !probe {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.isOpen.Load() {
		c.logger.Info("Redis is reachable again", zap.String("address", c.addr), zap.String("purpose", string(c.purpose)))
		c.isOpen.Store(false)
	}
	c.probing = false
}

// abandoned: the caller gave up before Redis answered; the next call may
// probe instead.
func (c *circuit) abandoned(probe bool) {
	if !probe {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
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
