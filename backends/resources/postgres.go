package resources

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// pgStore keeps the documents in PostgreSQL, so that several gateways
// share them. It answers as the SQLite store does: the same table shape
// (the document kept as the exact text it was stored as, with a generated
// jsonb copy that sorting, filtering and the indexes read)
// (text columns in the C collation, so keys and strings sort byte-wise as
// SQLite sorts them), the same sort and filter semantics, and preconditions
// decided inside the write's transaction: Tx.Get locks the row (SELECT …
// FOR UPDATE), so of two writers holding the same ETag, through the same
// gateway or two, the second reads the first's result and fails its
// precondition. A create is one INSERT … ON CONFLICT DO NOTHING: of two
// creates of one key, one inserts and the other finds the row. A child's
// create pins its parent (SELECT … FOR KEY SHARE): creates under one
// parent run side by side, and a delete of the parent waits for them.
//
// The password comes from the environment (PGPASSWORD) or a password file
// (PGPASSFILE, ~/.pgpass), as libpq's do, or from the URL; the URL is never
// logged with it.
//
// Every call has a deadline (timeout: store_timeout) over acquiring a
// connection, connecting and its statements. A statement past it makes
// pgx close its connection, which the pool then drops: a server that froze
// mid-answer leaves no connection stuck in a read, and the pool serves
// again, with fresh connections, as soon as the server answers. A
// connection whose server takes no writes (it answered SQLSTATE 25006: a
// standby, a primary fenced in a switchover) is closed too, so the next
// call dials anew and, with a multi-host URL and
// target_session_attrs=read-write, reaches the primary.
type pgStore struct {
	pool    *pgxpool.Pool
	timeout time.Duration
	// the declared types of each collection's sortable fields, which pick
	// the SQL expression a field sorts and filters by
	mu    sync.RWMutex
	types map[string]map[string]string
}

// migrationLock is the advisory lock that serialises schema changes
// between gateways that start (or reload) at once.
const migrationLock = 0x72657374676174 // "restgat"

const pgSchema = `
CREATE TABLE IF NOT EXISTS documents (
	collection  text COLLATE "C" NOT NULL,
	parent      text COLLATE "C" NOT NULL DEFAULT '',
	key         text COLLATE "C" NOT NULL,
	doc         text NOT NULL,
	fields      jsonb GENERATED ALWAYS AS (doc::jsonb) STORED,
	owner       text COLLATE "C" NOT NULL DEFAULT '',
	version     bigint NOT NULL,
	created_at  timestamptz NOT NULL,
	modified_at timestamptz,
	PRIMARY KEY (collection, parent, key)
);
CREATE INDEX IF NOT EXISTS documents_created ON documents (collection, parent, created_at);
CREATE INDEX IF NOT EXISTS documents_modified ON documents (collection, parent, modified_at NULLS FIRST);
CREATE INDEX IF NOT EXISTS documents_owner ON documents (collection, owner);
`

// isPostgresURL tells a PostgreSQL database from a SQLite file.
func isPostgresURL(s string) bool {
	return strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://")
}

// redactURL is the URL without its password, for logs and errors; a
// multi-host URL names every host.
func redactURL(s string) string {
	cfg, err := pgconn.ParseConfig(s)
	if err != nil {
		return "postgres://(unparsable URL)"
	}
	hosts := []string{net.JoinHostPort(cfg.Host, fmt.Sprint(cfg.Port))}
	for _, fb := range cfg.Fallbacks { // each host once per TLS setting
		if h := net.JoinHostPort(fb.Host, fmt.Sprint(fb.Port)); h != hosts[len(hosts)-1] {
			hosts = append(hosts, h)
		}
	}
	return fmt.Sprintf("postgres://%s@%s/%s", cfg.User, strings.Join(hosts, ","), cfg.Database)
}

// openPostgres connects and creates or upgrades the schema under the
// migration lock; timeout is every later call's deadline.
func openPostgres(ctx context.Context, url string, timeout time.Duration) (*pgStore, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		// pgx's message may quote the URL, password included
		return nil, errors.New("the PostgreSQL URL cannot be parsed (postgres://user@host:port/database?sslmode=...)")
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		// the pool connects in the background of a call, past the call's
		// deadline: bound it too
		cfg.ConnConfig.ConnectTimeout = timeout
	}
	cfg.ConnConfig.OnPgError = closeReadOnly(cfg.ConnConfig.OnPgError)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	s := &pgStore{pool: pool, timeout: timeout, types: map[string]map[string]string{}}
	if err := s.migrate(ctx, func(ctx context.Context, c *pgxpool.Conn) error {
		_, err := c.Exec(ctx, pgSchema)
		return err
	}); err != nil {
		pool.Close()
		return nil, fmt.Errorf("creating the schema: %w", err)
	}
	return s, nil
}

// readOnlySQLTransaction is the SQLSTATE of a write on a server that
// takes none.
const readOnlySQLTransaction = "25006"

// closeReadOnly wraps pgx's handler of the errors the server sends (which
// closes the connection on a FATAL one) so that it also closes a
// connection whose statement failed with SQLSTATE 25006,
// read_only_sql_transaction: the server it reached takes no writes (a
// standby, a primary fenced during a switchover). The error still reaches
// the caller (a 503); the pool destroys the closed connection when it is
// released, and the next acquire dials anew, which with a multi-host URL
// and target_session_attrs=read-write reaches the primary. Kept, the
// connection would fail every write until its lifetime ran out.
func closeReadOnly(next pgconn.PgErrorHandler) pgconn.PgErrorHandler {
	return func(c *pgconn.PgConn, pe *pgconn.PgError) bool {
		if pe.Code == readOnlySQLTransaction {
			return false
		}
		return next == nil || next(c, pe)
	}
}

// migrate runs fn holding the migration lock, on one connection.
func (s *pgStore) migrate(ctx context.Context, fn func(context.Context, *pgxpool.Conn) error) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	c, err := s.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer c.Release()
	if _, err := c.Exec(ctx, `SELECT pg_advisory_lock($1)`, int64(migrationLock)); err != nil {
		return err
	}
	defer c.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, int64(migrationLock))
	return fn(ctx, c)
}

// prefixChars is how much of a string field an index holds: a btree entry
// has a size limit (about 2.7 kB), and a string field may be 1 MB.
const prefixChars = 200

// fieldExprs are the SQL expressions a field sorts by, in order, and the
// one its index is built on ("" for none). Strings compare byte-wise
// (COLLATE "C", as SQLite compares) by their first prefixChars characters,
// which the index holds, then in full (which orders exactly as the full
// string alone: a prefix that differs decides); numbers and booleans
// compare as jsonb (numerically; false before true). A field of no
// declared type may hold anything, of any size: it is sorted as jsonb
// without an index.
func fieldExprs(field, typ string) (sort []string, index string, err error) {
	switch field {
	case keyField:
		return []string{"key"}, "", nil
	case metaCreated, metaModified:
		return []string{field}, "", nil
	}
	if !identifier.MatchString(field) {
		return nil, "", fmt.Errorf("invalid field name %q", field)
	}
	switch typ {
	case "string":
		prefix := fmt.Sprintf(`(left(fields->>'%s', %d) COLLATE "C")`, field, prefixChars)
		return []string{prefix, `((fields->>'` + field + `') COLLATE "C")`}, prefix, nil
	case "number", "integer", "boolean":
		e := `(fields->'` + field + `')`
		return []string{e}, e, nil
	}
	return []string{`(fields->'` + field + `')`}, "", nil
}

// ensureIndexes records the collection's field types and adds an index
// per sortable field (created by the first gateway to need it, under the
// migration lock): a configuration that adds a field needs no migration.
func (s *pgStore) ensureIndexes(c *Collection) error {
	types := map[string]string{}
	for _, name := range c.sortable {
		if f := c.fields[name]; f != nil {
			types[name] = f.Type
		}
	}
	s.mu.Lock()
	s.types[c.Name] = types
	s.mu.Unlock()
	return s.migrate(context.Background(), func(ctx context.Context, conn *pgxpool.Conn) error {
		for _, name := range c.sortable {
			_, expr, err := fieldExprs(name, types[name])
			if err != nil || expr == "" {
				continue
			}
			sum := sha256.Sum256([]byte(c.Name + "\x00" + name + "\x00" + expr))
			// NULLS FIRST as the queries sort (SQLite's order), so the
			// index serves both directions
			stmt := fmt.Sprintf(`CREATE INDEX IF NOT EXISTS "ix_%s" ON documents (collection, parent, %s NULLS FIRST, key)`, hex.EncodeToString(sum[:12]), expr)
			if _, err := conn.Exec(ctx, stmt); err != nil {
				return fmt.Errorf("indexing %s.%s: %w", c.Name, name, err)
			}
		}
		return nil
	})
}

func (s *pgStore) fieldType(collection, field string) string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.types[collection][field]
}

const pgDocColumns = `collection, parent, key, doc, owner, version, created_at, modified_at`

// deadline bounds one store call.
func (s *pgStore) deadline(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.timeout)
}

func (s *pgStore) Get(ctx context.Context, collection, parent, key string) (*Doc, error) {
	ctx, cancel := s.deadline(ctx)
	defer cancel()
	d, err := scanPgDoc(s.pool.QueryRow(ctx, `SELECT `+pgDocColumns+` FROM documents WHERE collection = $1 AND parent = $2 AND key = $3`, collection, parent, key))
	return d, unavailable(err)
}

func (s *pgStore) List(ctx context.Context, q ListQuery) ([]*Doc, int, error) {
	ctx, cancel := s.deadline(ctx)
	defer cancel()
	where := []string{"collection = $1", "parent = $2"}
	args := []any{q.Collection, q.Parent}
	arg := func(v any) string {
		args = append(args, v)
		return fmt.Sprintf("$%d", len(args))
	}
	if q.Owner != "" {
		where = append(where, "owner = "+arg(q.Owner))
	}
	for _, f := range q.Filters {
		typ := s.fieldType(q.Collection, f.Field)
		exprs, _, err := fieldExprs(f.Field, typ)
		if err != nil {
			return nil, 0, err
		}
		switch {
		case len(exprs) == 2: // a string: the indexed prefix, then in full
			v := fmt.Sprint(f.Value)
			where = append(where, fmt.Sprintf("%s = left(%s, %d) AND %s = %s", exprs[0], arg(v), prefixChars, exprs[1], arg(v)))
		case strings.Contains(exprs[0], "fields"):
			where = append(where, exprs[0]+" = "+arg(jsonFilterValue(f.Value, typ))+"::jsonb")
		default:
			where = append(where, exprs[0]+" = "+arg(fmt.Sprint(f.Value)))
		}
	}
	cond := strings.Join(where, " AND ")
	var total int
	if err := s.pool.QueryRow(ctx, `SELECT COUNT(*) FROM documents WHERE `+cond, args...).Scan(&total); err != nil {
		return nil, 0, unavailable(err)
	}
	var order []string
	for _, o := range q.Sort {
		exprs, _, err := fieldExprs(o.Field, s.fieldType(q.Collection, o.Field))
		if err != nil {
			return nil, 0, err
		}
		for _, expr := range exprs {
			// SQLite puts NULLs (a missing field) first when ascending
			if o.Desc {
				expr += " DESC NULLS LAST"
			} else {
				expr += " ASC NULLS FIRST"
			}
			order = append(order, expr)
		}
	}
	order = append(order, "key") // a stable order across pages
	limit, offset := arg(q.Limit), arg(q.Offset)
	rows, err := s.pool.Query(ctx, `SELECT `+pgDocColumns+` FROM documents WHERE `+cond+` ORDER BY `+strings.Join(order, ", ")+` LIMIT `+limit+` OFFSET `+offset, args...)
	if err != nil {
		return nil, 0, unavailable(err)
	}
	defer rows.Close()
	docs := make([]*Doc, 0, q.Limit)
	for rows.Next() {
		d, err := scanPgDoc(rows)
		if err != nil {
			return nil, 0, err
		}
		docs = append(docs, d)
	}
	return docs, total, unavailable(rows.Err())
}

// jsonFilterValue is a filter value as the JSON the documents hold: the
// handler gives booleans as 1/0 (what SQLite's json_extract yields).
func jsonFilterValue(v any, typ string) string {
	if typ == "boolean" {
		if v == 1 {
			return "true"
		}
		return "false"
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// maxAttempts is how many times Update runs a transaction that PostgreSQL
// aborts to resolve a deadlock or a serialization failure.
const maxAttempts = 6

// Update runs fn in a transaction; a deadlock or serialization failure
// (which PostgreSQL resolves by aborting one side) runs it again, up to
// maxAttempts times, then fails with ErrBusy.
func (s *pgStore) Update(ctx context.Context, fn func(Tx) error) error {
	ctx, cancel := s.deadline(ctx)
	defer cancel()
	var err error
	for range maxAttempts {
		err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			return fn(pgTx{ctx: ctx, tx: tx})
		})
		if !aborted(err) {
			return unavailable(err)
		}
	}
	return fmt.Errorf("%w: %d attempts: %v", ErrBusy, maxAttempts, err)
}

// aborted reports a transaction PostgreSQL rolled back to let a concurrent
// one finish: a deadlock (40P01) or a serialization failure (40001).
func aborted(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "40P01" || pe.Code == "40001")
}

func (s *pgStore) Close() error {
	s.pool.Close()
	return nil
}

type pgTx struct {
	ctx context.Context
	tx  pgx.Tx
}

// Get reads and locks the row until the transaction ends.
func (t pgTx) Get(collection, parent, key string) (*Doc, error) {
	return scanPgDoc(t.tx.QueryRow(t.ctx, `SELECT `+pgDocColumns+` FROM documents WHERE collection = $1 AND parent = $2 AND key = $3 FOR UPDATE`, collection, parent, key))
}

// Pin locks the row FOR KEY SHARE: a concurrent delete waits for this
// transaction (and then finds its children), while other pins, and
// updates that keep the key, do not.
func (t pgTx) Pin(collection, parent, key string) error {
	var one int
	err := t.tx.QueryRow(t.ctx, `SELECT 1 FROM documents WHERE collection = $1 AND parent = $2 AND key = $3 FOR KEY SHARE`, collection, parent, key).Scan(&one)
	if errors.Is(err, pgx.ErrNoRows) {
		return ErrNotFound
	}
	return err
}

func (t pgTx) Insert(d *Doc) error {
	tag, err := t.tx.Exec(t.ctx, `INSERT INTO documents (collection, parent, key, doc, owner, version, created_at, modified_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING`,
		d.Collection, d.Parent, d.Key, string(d.Body), d.Owner, d.Version, d.Created.UTC(), pgTime(d.Modified))
	return affected(tag, err, ErrExists)
}

func (t pgTx) Replace(d *Doc) error {
	tag, err := t.tx.Exec(t.ctx, `UPDATE documents SET doc = $1, owner = $2, version = $3, modified_at = $4 WHERE collection = $5 AND parent = $6 AND key = $7`,
		string(d.Body), d.Owner, d.Version, pgTime(d.Modified), d.Collection, d.Parent, d.Key)
	return affected(tag, err, ErrNotFound)
}

func (t pgTx) Delete(collection, parent, key string) error {
	tag, err := t.tx.Exec(t.ctx, `DELETE FROM documents WHERE collection = $1 AND parent = $2 AND key = $3`, collection, parent, key)
	return affected(tag, err, ErrNotFound)
}

func (t pgTx) CountChildren(collection, parent string) (int, error) {
	var n int
	err := t.tx.QueryRow(t.ctx, `SELECT COUNT(*) FROM documents WHERE collection = $1 AND parent = $2`, collection, parent).Scan(&n)
	return n, err
}

func (t pgTx) DeleteChildren(collection, parent string) error {
	_, err := t.tx.Exec(t.ctx, `DELETE FROM documents WHERE collection = $1 AND parent = $2`, collection, parent)
	return err
}

func affected(tag pgconn.CommandTag, err error, ifNone error) error {
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return ifNone
	}
	return nil
}

// scanPgDoc reads a row of pgDocColumns, after the columns lead scans
// into (the changes table's seq and op).
func scanPgDoc(row pgx.Row, lead ...any) (*Doc, error) {
	var d Doc
	var body string
	var modified *time.Time
	err := row.Scan(append(lead, &d.Collection, &d.Parent, &d.Key, &body, &d.Owner, &d.Version, &d.Created, &modified)...)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	d.Body = json.RawMessage(body)
	d.Created = d.Created.UTC()
	if modified != nil {
		d.Modified = modified.UTC()
	}
	return &d, nil
}

func pgTime(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UTC()
}

// ErrUnavailable wraps a failure to reach the database, or a database
// that takes writes (as opposed to an error the database raised about a
// statement): the handler answers 503.
var ErrUnavailable = errors.New("the document store is unavailable")

// ErrBusy wraps the last failure of a transaction that PostgreSQL aborted
// on every attempt (deadlocks or serialization failures with concurrent
// writes): nothing was written, and the handler answers 503.
var ErrBusy = errors.New("the document store is busy with conflicting writes")

func unavailable(err error) error {
	if err == nil {
		return nil
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch {
		case strings.HasPrefix(pe.Code, "08"), // connection exception
			pe.Code == "57P01", pe.Code == "57P02", pe.Code == "57P03", // shutting down, cannot connect now
			pe.Code == "53300", // too many connections
			// a standby not yet promoted, a fenced primary (closeReadOnly
			// has closed the connection)
			pe.Code == readOnlySQLTransaction:
			return fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		return err
	}
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || // the call's deadline passed: no answer in time
		errors.As(err, new(*pgconn.ConnectError)) || errors.As(err, &ne) || pgconn.Timeout(err) || pgconn.SafeToRetry(err) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		strings.Contains(err.Error(), "conn closed") {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return err
}
