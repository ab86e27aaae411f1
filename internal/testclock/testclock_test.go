package testclock

import (
	"testing"
	"time"
)

func TestClock(t *testing.T) {
	start := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	c := New(start, time.Millisecond)
	a, b := c.Now(), c.Now()
	if !b.After(a) || b.Sub(a) != time.Millisecond {
		t.Errorf("two reads %v, %v: want a millisecond apart", a, b)
	}
	c.Add(time.Hour)
	if got := c.Now().Sub(start); got != time.Hour+3*time.Millisecond {
		t.Errorf("after Add(1h): %v since start", got)
	}
	c.Set(start)
	if got := c.Now(); !got.Equal(start.Add(time.Millisecond)) {
		t.Errorf("after Set: %v", got)
	}
}
