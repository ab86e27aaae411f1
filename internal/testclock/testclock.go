// Package testclock is the injected clock of restgate's tests. It moves on
// by a step on every read, as real time does (a frozen clock once hid
// refunds that did nothing once any time had passed), and by hand.
package testclock

import (
	"sync"
	"time"
)

// Clock is a fake clock, safe for concurrent use.
type Clock struct {
	mu   sync.Mutex
	t    time.Time
	step time.Duration
}

// New returns a clock at start that moves by step on every read.
func New(start time.Time, step time.Duration) *Clock {
	return &Clock{t: start, step: step}
}

// Now moves the clock on by its step and returns the new time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(c.step)
	return c.t
}

// Add moves the clock on by d.
func (c *Clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// Set puts the clock at t.
func (c *Clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}
