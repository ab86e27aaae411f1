package resources

import (
	"context"
	"slices"
	"sort"
	"sync"
	"time"

	"go.uber.org/zap"
)

const (
	// feedPage is how many changes a watcher or the hub reads at a time,
	// and so the most events one write to a stream carries.
	feedPage = 256
	// ringChanges and ringBytes bound the hub's ring of recent changes,
	// which every watcher of a gateway reads from; a watcher further behind
	// reads the log in the database instead.
	ringChanges = 4096
	ringBytes   = 16 << 20
	// feedPoll is how often the hub reads the log without a poke: a
	// notification lost with a PostgreSQL connection costs at most this.
	feedPoll = 2 * time.Second
	// pruneInterval is how often the log is pruned by age at the least.
	pruneInterval = time.Minute
)

// feedHub follows one database's change log for the watchers of this
// process: it reads new changes once (on a poke after a local commit, a
// PostgreSQL notification, or every feedPoll), keeps the recent ones in a
// bounded ring and wakes the watchers, which each keep only a cursor into
// it. A stalled watcher therefore holds no queue: memory does not grow
// with it, and when it reads again it catches up from the ring or the log.
// The hub also prunes the log and counts each principal's open streams.
type feedHub struct {
	log    changeLog
	logger *zap.Logger
	kick   chan struct{}
	cancel context.CancelFunc
	done   chan struct{}

	mu         sync.Mutex
	started    bool      // last and from are known
	last       int64     // the newest seq read
	from       int64     // the ring holds every change after this seq
	ring       []*change // in seq order
	ringSize   int
	waiters    map[chan struct{}]struct{}
	streams    map[string]int // open streams per principal
	retention  time.Duration
	keep       int
	prunedLast int64 // last, at the latest prune
	prunedAt   time.Time
}

func newFeedHub(log changeLog, logger *zap.Logger) *feedHub {
	ctx, cancel := context.WithCancel(context.Background())
	hub := &feedHub{
		log: log, logger: logger, kick: make(chan struct{}, 1), cancel: cancel, done: make(chan struct{}),
		waiters: map[chan struct{}]struct{}{}, streams: map[string]int{},
	}
	go func() {
		defer close(hub.done)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); log.watchChanges(ctx, hub.poke) }()
		hub.run(ctx)
		wg.Wait()
	}()
	return hub
}

// configure sets the log's retention; handlers sharing a database share
// its log, and the longest retention of any of them applies.
func (hub *feedHub) configure(retention time.Duration, keep int) {
	hub.mu.Lock()
	defer hub.mu.Unlock()
	hub.retention = max(hub.retention, retention)
	hub.keep = max(hub.keep, keep)
}

// poke asks the hub to read the log now.
func (hub *feedHub) poke() {
	select {
	case hub.kick <- struct{}{}:
	default:
	}
}

func (hub *feedHub) close() {
	hub.cancel()
	<-hub.done
}

func (hub *feedHub) run(ctx context.Context) {
	tick := time.NewTicker(feedPoll)
	defer tick.Stop()
	for {
		hub.ingest(ctx)
		hub.maybePrune(ctx)
		select {
		case <-ctx.Done():
			return
		case <-hub.kick:
		case <-tick.C:
		}
	}
}

// ingest reads every change after the last one read into the ring.
func (hub *feedHub) ingest(ctx context.Context) {
	hub.mu.Lock()
	started, last := hub.started, hub.last
	hub.mu.Unlock()
	if !started {
		latest, err := hub.log.latestChange(ctx)
		if err != nil {
			hub.logger.Warn("change feed: cannot read the change log", zap.Error(err))
			return
		}
		hub.mu.Lock()
		hub.started, hub.last, hub.from, last = true, latest, latest, latest
		hub.prunedLast, hub.prunedAt = latest, time.Now()
		// a watcher that opened before may be behind the ring: it reads
		// the log, now
		hub.wakeLocked()
		hub.mu.Unlock()
	}
	for {
		batch, pruned, err := hub.log.changesSince(ctx, last, feedPage)
		if err != nil {
			if ctx.Err() == nil {
				hub.logger.Warn("change feed: cannot read the change log", zap.Error(err))
			}
			return
		}
		hub.mu.Lock()
		if last < pruned {
			// the log was pruned past what was read: the ring restarts
			// there, and watchers behind it find the gap in the log
			hub.ring, hub.ringSize, hub.from = nil, 0, pruned
			batch = slices.DeleteFunc(batch, func(c *change) bool { return c.seq <= pruned })
			hub.last, last = pruned, pruned
		}
		for _, c := range batch {
			hub.ring = append(hub.ring, c)
			hub.ringSize += c.size()
			hub.last, last = c.seq, c.seq
		}
		drop := 0
		for size := hub.ringSize; drop < len(hub.ring) && (len(hub.ring)-drop > ringChanges || size > ringBytes); drop++ {
			size -= hub.ring[drop].size()
			hub.from = hub.ring[drop].seq
		}
		if drop > 0 {
			for _, c := range hub.ring[:drop] {
				hub.ringSize -= c.size()
			}
			hub.ring = slices.Delete(hub.ring, 0, drop)
		}
		if len(batch) > 0 {
			hub.wakeLocked()
		}
		hub.mu.Unlock()
		if len(batch) < feedPage {
			return
		}
	}
}

func (hub *feedHub) wakeLocked() {
	for w := range hub.waiters {
		select {
		case w <- struct{}{}:
		default:
		}
	}
}

// maybePrune prunes the log every tenth of its kept count of changes,
// and at least every pruneInterval.
func (hub *feedHub) maybePrune(ctx context.Context) {
	hub.mu.Lock()
	due := hub.started && hub.keep > 0 &&
		(hub.last-hub.prunedLast >= int64(max(hub.keep/10, 1)) || time.Since(hub.prunedAt) >= pruneInterval)
	retention, keep, last := hub.retention, hub.keep, hub.last
	hub.mu.Unlock()
	if !due {
		return
	}
	through, err := hub.log.pruneChanges(ctx, time.Now().Add(-retention), keep)
	if err != nil {
		if ctx.Err() == nil {
			hub.logger.Warn("change feed: cannot prune the change log", zap.Error(err))
		}
		return
	}
	hub.mu.Lock()
	defer hub.mu.Unlock()
	hub.prunedLast, hub.prunedAt = last, time.Now()
	// the ring follows the log: a watcher behind what the log holds gets
	// its reset whichever gateway it is on
	if through > hub.from {
		drop := sort.Search(len(hub.ring), func(i int) bool { return hub.ring[i].seq > through })
		for _, c := range hub.ring[:drop] {
			hub.ringSize -= c.size()
		}
		hub.ring = slices.Delete(hub.ring, 0, drop)
		hub.from = through
	}
}

// after returns up to limit changes after seq from the ring; false if the
// ring does not hold every change after seq (read the log instead).
func (hub *feedHub) after(seq int64, limit int) ([]*change, bool) {
	hub.mu.Lock()
	defer hub.mu.Unlock()
	if !hub.started || seq < hub.from {
		return nil, false
	}
	i := sort.Search(len(hub.ring), func(i int) bool { return hub.ring[i].seq > seq })
	return slices.Clone(hub.ring[i:min(i+limit, len(hub.ring))]), true
}

// subscribe returns a channel that receives a token whenever new changes
// are in the ring; unsubscribe with the returned function.
func (hub *feedHub) subscribe() (<-chan struct{}, func()) {
	w := make(chan struct{}, 1)
	hub.mu.Lock()
	hub.waiters[w] = struct{}{}
	hub.mu.Unlock()
	return w, func() {
		hub.mu.Lock()
		delete(hub.waiters, w)
		hub.mu.Unlock()
	}
}

// acquire counts a stream of who's, unless who has limit open already.
func (hub *feedHub) acquire(who string, limit int) (release func(), ok bool) {
	hub.mu.Lock()
	defer hub.mu.Unlock()
	if hub.streams[who] >= limit {
		return nil, false
	}
	hub.streams[who]++
	return func() {
		hub.mu.Lock()
		defer hub.mu.Unlock()
		if hub.streams[who]--; hub.streams[who] <= 0 {
			delete(hub.streams, who)
		}
	}, true
}
