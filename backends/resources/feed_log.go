package resources

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// The change log: one row per created, updated or deleted document,
// written in the transaction of the change itself, so that it holds
// committed changes only, each once, in commit order. seq is the feed's
// event id. A document's row keeps the document as it was after the
// change (the last version for a delete): a replay shows each change as
// it was, and the feed renders it for each caller as a GET would.
//
// change_log.pruned_through is the highest seq that pruning may have
// removed: a cursor below it may have missed a change, and gets a reset.
// Pruning always keeps the newest row, so the log also says where "now" is.

// Change operations, the feed's event types.
const (
	opCreated = "created"
	opUpdated = "updated"
	opDeleted = "deleted"
)

// change is one row of the change log.
type change struct {
	seq int64
	op  string
	doc *Doc // after the change; for a delete, the last version

	// the event's data, rendered once per handler and collection (every
	// watcher of a collection sends the same bytes)
	mu       sync.Mutex
	renderer any
	data     []byte
}

// size is what the change costs in the hub's ring, roughly.
func (c *change) size() int { return len(c.doc.Body) + len(c.doc.Key) + 200 }

// changeLog is the log side of a store.
type changeLog interface {
	// initChangeLog creates the tables.
	initChangeLog(ctx context.Context) error
	// changesSince returns up to limit changes after seq in order, and then
	// (read after them) the pruned_through mark.
	changesSince(ctx context.Context, after int64, limit int) (changes []*change, prunedThrough int64, err error)
	// latestChange is the newest seq (or the pruned_through mark when
	// higher), the position a new watcher starts from.
	latestChange(ctx context.Context) (int64, error)
	// pruneChanges removes changes logged before olderThan or beyond the
	// newest keep, always keeping the newest one, and returns the
	// pruned_through mark it set (0 if it removed nothing).
	pruneChanges(ctx context.Context, olderThan time.Time, keep int) (int64, error)
	// watchChanges calls poke when another process may have logged a
	// change, until ctx ends (PostgreSQL: LISTEN); it may return at once.
	watchChanges(ctx context.Context, poke func())
}

// changeTx is the log side of a store's transaction.
type changeTx interface {
	// logChanges appends the transaction's changes to the log.
	logChanges(changes []*change) error
	// children reads, and keeps from changing, the documents
	// DeleteChildren is about to delete.
	children(collection, parent string) ([]*Doc, error)
}

// loggingTx records every change made through it, for the log.
type loggingTx struct {
	Tx
	changes []*change
}

func (t *loggingTx) add(op string, d *Doc) {
	cp := *d
	t.changes = append(t.changes, &change{op: op, doc: &cp})
}

func (t *loggingTx) Insert(d *Doc) error {
	if err := t.Tx.Insert(d); err != nil {
		return err
	}
	t.add(opCreated, d)
	return nil
}

func (t *loggingTx) Replace(d *Doc) error {
	if err := t.Tx.Replace(d); err != nil {
		return err
	}
	t.add(opUpdated, d)
	return nil
}

func (t *loggingTx) Delete(collection, parent, key string) error {
	last, err := t.Tx.Get(collection, parent, key)
	if err != nil {
		return err
	}
	if err := t.Tx.Delete(collection, parent, key); err != nil {
		return err
	}
	t.add(opDeleted, last)
	return nil
}

func (t *loggingTx) DeleteChildren(collection, parent string) error {
	kids, err := t.Tx.(changeTx).children(collection, parent)
	if err != nil {
		return err
	}
	if err := t.Tx.DeleteChildren(collection, parent); err != nil {
		return err
	}
	for _, d := range kids {
		t.add(opDeleted, d)
	}
	return nil
}

// loggedStore is a store whose every write also lands in its change log,
// in the same transaction; a committed write pokes the hub.
type loggedStore struct {
	indexedStore
	hub *feedHub
}

func (s loggedStore) Update(ctx context.Context, fn func(Tx) error) error {
	var logged bool
	err := s.indexedStore.Update(ctx, func(tx Tx) error {
		logged = false // a run the store repeats starts over
		lt := &loggingTx{Tx: tx}
		if err := fn(lt); err != nil {
			return err
		}
		if len(lt.changes) == 0 {
			return nil
		}
		logged = true
		return tx.(changeTx).logChanges(lt.changes)
	})
	if err == nil && logged {
		s.hub.poke()
	}
	return err
}

// SQLite.

const sqliteChangeSchema = `
CREATE TABLE IF NOT EXISTS changes (
	seq         INTEGER PRIMARY KEY AUTOINCREMENT,
	op          TEXT NOT NULL,
	collection  TEXT NOT NULL,
	parent      TEXT NOT NULL,
	key         TEXT NOT NULL,
	doc         TEXT NOT NULL,
	owner       TEXT NOT NULL,
	version     INTEGER NOT NULL,
	created_at  TEXT NOT NULL,
	modified_at TEXT,
	logged_at   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS changes_logged ON changes (logged_at);
CREATE TABLE IF NOT EXISTS change_log (
	id             INTEGER PRIMARY KEY CHECK (id = 1),
	pruned_through INTEGER NOT NULL
);
INSERT OR IGNORE INTO change_log VALUES (1, 0);
`

const changeColumns = `seq, op, ` + docColumns

func (s *sqliteStore) initChangeLog(ctx context.Context) error {
	_, err := s.writer.ExecContext(ctx, sqliteChangeSchema)
	return err
}

func (t sqliteTx) logChanges(changes []*change) error {
	at := time.Now().UTC().Format(timeLayout)
	for _, c := range changes {
		d := c.doc
		if _, err := t.tx.Exec(`INSERT INTO changes (op, collection, parent, key, doc, owner, version, created_at, modified_at, logged_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			c.op, d.Collection, d.Parent, d.Key, string(d.Body), d.Owner, d.Version, d.Created.UTC().Format(timeLayout), nullTime(d.Modified), at); err != nil {
			return err
		}
	}
	return nil
}

func (t sqliteTx) children(collection, parent string) ([]*Doc, error) {
	rows, err := t.tx.Query(`SELECT `+docColumns+` FROM documents WHERE collection = ? AND parent = ? ORDER BY key`, collection, parent)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var docs []*Doc
	for rows.Next() {
		d, err := scanDoc(rows)
		if err != nil {
			return nil, err
		}
		docs = append(docs, d)
	}
	return docs, rows.Err()
}

func (s *sqliteStore) changesSince(ctx context.Context, after int64, limit int) ([]*change, int64, error) {
	rows, err := s.reader.QueryContext(ctx, `SELECT `+changeColumns+` FROM changes WHERE seq > ? ORDER BY seq LIMIT ?`, after, limit)
	if err != nil {
		return nil, 0, err
	}
	defer rows.Close()
	var out []*change
	for rows.Next() {
		c, err := scanChange(rows)
		if err != nil {
			return nil, 0, err
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, 0, err
	}
	var pruned int64
	err = s.reader.QueryRowContext(ctx, `SELECT pruned_through FROM change_log`).Scan(&pruned)
	return out, pruned, err
}

func (s *sqliteStore) latestChange(ctx context.Context) (int64, error) {
	var n int64
	err := s.reader.QueryRowContext(ctx, `SELECT MAX(COALESCE((SELECT MAX(seq) FROM changes), 0), pruned_through) FROM change_log`).Scan(&n)
	return n, err
}

func (s *sqliteStore) pruneChanges(ctx context.Context, olderThan time.Time, keep int) (int64, error) {
	tx, err := s.writer.BeginTx(ctx, nil)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback()
	var newest, byAge int64
	if err := tx.QueryRow(`SELECT COALESCE(MAX(seq), 0) FROM changes`).Scan(&newest); err != nil {
		return 0, err
	}
	if err := tx.QueryRow(`SELECT COALESCE(MAX(seq), 0) FROM changes WHERE logged_at < ?`, olderThan.UTC().Format(timeLayout)).Scan(&byAge); err != nil {
		return 0, err
	}
	through := min(max(byAge, newest-int64(keep)), newest-1)
	if through <= 0 {
		return 0, nil
	}
	if _, err := tx.Exec(`DELETE FROM changes WHERE seq <= ?`, through); err != nil {
		return 0, err
	}
	if _, err := tx.Exec(`UPDATE change_log SET pruned_through = ? WHERE pruned_through < ?`, through, through); err != nil {
		return 0, err
	}
	return through, tx.Commit()
}

// watchChanges: a SQLite file has one writer process, which pokes its hub.
func (s *sqliteStore) watchChanges(context.Context, func()) {}

func scanChange(row scanner) (*change, error) {
	var c change
	var err error
	c.doc, err = scanDoc(row, &c.seq, &c.op)
	return &c, err
}

// PostgreSQL.

// changeLock is the advisory lock a writing transaction takes, last,
// before it logs its changes: seqs are then handed out in commit order
// (the lock is released after the commit is visible), so a reader that
// sees seq n has seen every committed change before it.
const changeLock = 0x72676368616e6765 // "rgchange"

// changeChannel is the NOTIFY channel; the payload is the newest seq.
const changeChannel = "restgate_changes"

const pgChangeSchema = `
CREATE TABLE IF NOT EXISTS changes (
	seq         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	op          text NOT NULL,
	collection  text COLLATE "C" NOT NULL,
	parent      text COLLATE "C" NOT NULL,
	key         text COLLATE "C" NOT NULL,
	doc         text NOT NULL,
	owner       text COLLATE "C" NOT NULL,
	version     bigint NOT NULL,
	created_at  timestamptz NOT NULL,
	modified_at timestamptz,
	logged_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS changes_logged ON changes (logged_at);
CREATE TABLE IF NOT EXISTS change_log (
	id             int PRIMARY KEY CHECK (id = 1),
	pruned_through bigint NOT NULL
);
INSERT INTO change_log VALUES (1, 0) ON CONFLICT DO NOTHING;
`

func (s *pgStore) initChangeLog(ctx context.Context) error {
	return s.migrate(ctx, func(ctx context.Context, c *pgxpool.Conn) error {
		_, err := c.Exec(ctx, pgChangeSchema)
		return err
	})
}

func (t pgTx) logChanges(changes []*change) error {
	if _, err := t.tx.Exec(t.ctx, `SELECT pg_advisory_xact_lock($1)`, int64(changeLock)); err != nil {
		return err
	}
	var seq int64
	for _, c := range changes {
		d := c.doc
		if err := t.tx.QueryRow(t.ctx, `INSERT INTO changes (op, collection, parent, key, doc, owner, version, created_at, modified_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING seq`,
			c.op, d.Collection, d.Parent, d.Key, string(d.Body), d.Owner, d.Version, d.Created.UTC(), pgTime(d.Modified)).Scan(&seq); err != nil {
			return err
		}
	}
	_, err := t.tx.Exec(t.ctx, `SELECT pg_notify($1, $2)`, changeChannel, strconv.FormatInt(seq, 10))
	return err
}

func (t pgTx) children(collection, parent string) ([]*Doc, error) {
	rows, err := t.tx.Query(t.ctx, `SELECT `+pgDocColumns+` FROM documents WHERE collection = $1 AND parent = $2 ORDER BY key FOR UPDATE`, collection, parent)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var docs []*Doc
	for rows.Next() {
		d, err := scanPgDoc(rows)
		if err != nil {
			return nil, err
		}
		docs = append(docs, d)
	}
	return docs, rows.Err()
}

func (s *pgStore) changesSince(ctx context.Context, after int64, limit int) ([]*change, int64, error) {
	ctx, cancel := s.deadline(ctx)
	defer cancel()
	rows, err := s.pool.Query(ctx, `SELECT `+changeColumns+` FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2`, after, limit)
	if err != nil {
		return nil, 0, unavailable(err)
	}
	defer rows.Close()
	var out []*change
	for rows.Next() {
		var c change
		var err error
		if c.doc, err = scanPgDoc(rows, &c.seq, &c.op); err != nil {
			return nil, 0, unavailable(err)
		}
		out = append(out, &c)
	}
	if err := rows.Err(); err != nil {
		return nil, 0, unavailable(err)
	}
	var pruned int64
	err = s.pool.QueryRow(ctx, `SELECT pruned_through FROM change_log`).Scan(&pruned)
	return out, pruned, unavailable(err)
}

func (s *pgStore) latestChange(ctx context.Context) (int64, error) {
	ctx, cancel := s.deadline(ctx)
	defer cancel()
	var n int64
	err := s.pool.QueryRow(ctx, `SELECT GREATEST(COALESCE((SELECT MAX(seq) FROM changes), 0), pruned_through) FROM change_log`).Scan(&n)
	return n, unavailable(err)
}

func (s *pgStore) pruneChanges(ctx context.Context, olderThan time.Time, keep int) (int64, error) {
	ctx, cancel := s.deadline(ctx)
	defer cancel()
	var through int64
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, `WITH n AS (SELECT COALESCE(MAX(seq), 0) AS newest FROM changes)
			SELECT LEAST(GREATEST(COALESCE((SELECT MAX(seq) FROM changes WHERE logged_at < $1), 0), n.newest - $2), n.newest - 1) FROM n`,
			olderThan, keep).Scan(&through); err != nil {
			return err
		}
		if through <= 0 {
			return nil
		}
		if _, err := tx.Exec(ctx, `DELETE FROM changes WHERE seq <= $1`, through); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `UPDATE change_log SET pruned_through = $1 WHERE pruned_through < $1`, through)
		return err
	})
	if err != nil || through < 0 {
		return 0, unavailable(err)
	}
	return through, nil
}

// watchChanges holds one connection that LISTENs for the changes every
// gateway logs, and pokes on each notification and on every (re)connect,
// when notifications may have been missed.
func (s *pgStore) watchChanges(ctx context.Context, poke func()) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := s.listen(ctx, poke)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			backoff = 100 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (s *pgStore) listen(ctx context.Context, poke func()) error {
	cctx, cancel := s.deadline(ctx)
	conn, err := pgx.ConnectConfig(cctx, s.pool.Config().ConnConfig.Copy())
	if err == nil {
		_, err = conn.Exec(cctx, `LISTEN `+changeChannel)
	}
	cancel()
	if err != nil {
		if conn != nil {
			conn.Close(context.Background())
		}
		return err
	}
	defer conn.Close(context.Background())
	poke()
	for {
		if _, err := conn.WaitForNotification(ctx); err != nil {
			if errors.Is(err, context.Canceled) {
				return nil
			}
			return err
		}
		poke()
	}
}
