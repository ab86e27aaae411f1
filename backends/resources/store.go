package resources

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	_ "modernc.org/sqlite"
)

// ErrNotFound and ErrExists are what a Store returns for a missing document
// and for an insert whose key is taken.
var (
	ErrNotFound = errors.New("document not found")
	ErrExists   = errors.New("document exists")
)

// Doc is one stored document.
type Doc struct {
	Collection string
	Parent     string // the parent document's key, or "" at the top level
	Key        string
	Body       json.RawMessage // the fields, write-only ones included
	Owner      string
	Version    int64
	Created    time.Time
	Modified   time.Time // zero until the first change
}

// ListQuery selects a page of a collection. Field names are those the
// collection declares (checked by the handler, and again by the store).
type ListQuery struct {
	Collection string
	Parent     string
	Owner      string // if set, only this owner's documents
	Filters    []Filter
	Sort       []Order
	Limit      int
	Offset     int
}

// Filter is an equality condition on a field.
type Filter struct {
	Field string
	Value any
}

// Order is one sort key.
type Order struct {
	Field string
	Desc  bool
}

// Store keeps documents. Update runs fn in one serialised read-write
// transaction: everything fn reads and writes commits together or not at all.
// fn may run more than once (PostgreSQL aborts one side of a deadlock or a
// serialization failure, and Update runs it again): each run must build
// what it writes from its inputs and what it reads in tx, and set anew any
// result the caller reads afterwards, never carry one run's changes into
// the next.
type Store interface {
	Get(ctx context.Context, collection, parent, key string) (*Doc, error)
	List(ctx context.Context, q ListQuery) (docs []*Doc, total int, err error)
	Update(ctx context.Context, fn func(Tx) error) error
	Close() error
}

// Tx is the view of the store inside Update.
type Tx interface {
	// Get reads a document and keeps others from changing it until the
	// transaction ends.
	Get(collection, parent, key string) (*Doc, error)
	// Pin checks that a document exists (ErrNotFound if not) and keeps it
	// from being deleted until the transaction ends, without keeping
	// others from pinning it too: the parent of a child being created.
	Pin(collection, parent, key string) error
	Insert(d *Doc) error
	Replace(d *Doc) error
	Delete(collection, parent, key string) error
	CountChildren(collection, parent string) (int, error)
	DeleteChildren(collection, parent string) error
}

// Durability settings, as SQLite's `synchronous` pragma in WAL mode.
const (
	// DurabilityFull syncs the WAL on every commit: an acknowledged write
	// survives a process crash and a power loss.
	DurabilityFull = "full"
	// DurabilityNormal syncs only at checkpoints: an acknowledged write
	// survives a process crash (kill -9), not a power loss.
	DurabilityNormal = "normal"
)

// sqliteStore is the embedded default: one SQLite file in WAL mode, one
// writer connection (writes are serialised in this process, and the busy
// timeout covers other processes), a pool of read-only readers.
type sqliteStore struct {
	path   string
	writer *sql.DB
	reader *sql.DB
}

const schema = `
CREATE TABLE IF NOT EXISTS documents (
	collection  TEXT NOT NULL,
	parent      TEXT NOT NULL DEFAULT '',
	key         TEXT NOT NULL,
	doc         TEXT NOT NULL,
	owner       TEXT NOT NULL DEFAULT '',
	version     INTEGER NOT NULL,
	created_at  TEXT NOT NULL,
	modified_at TEXT,
	PRIMARY KEY (collection, parent, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS documents_created ON documents (collection, parent, created_at);
CREATE INDEX IF NOT EXISTS documents_modified ON documents (collection, parent, modified_at);
CREATE INDEX IF NOT EXISTS documents_owner ON documents (collection, owner);
`

// openSQLite opens (creating if needed) the database at path.
func openSQLite(path, durability string) (*sqliteStore, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	sync := "FULL"
	if durability == DurabilityNormal {
		sync = "NORMAL"
	}
	base := "file:" + (&url.URL{Path: path}).EscapedPath() + "?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(" + sync + ")"
	writer, err := sql.Open("sqlite", base+"&_txlock=immediate")
	if err != nil {
		return nil, err
	}
	writer.SetMaxOpenConns(1)
	writer.SetMaxIdleConns(1)
	writer.SetConnMaxLifetime(0)
	if _, err := writer.Exec(schema); err != nil {
		writer.Close()
		return nil, fmt.Errorf("creating schema in %s: %w", path, err)
	}
	reader, err := sql.Open("sqlite", base+"&_pragma=query_only(1)")
	if err != nil {
		writer.Close()
		return nil, err
	}
	reader.SetMaxOpenConns(8)
	reader.SetMaxIdleConns(8)
	return &sqliteStore{path: path, writer: writer, reader: reader}, nil
}

// ensureIndexes adds an expression index per sortable declared field, so
// that a sorted page reads a few index entries instead of the collection.
func (s *sqliteStore) ensureIndexes(c *Collection) error {
	for _, name := range c.sortable {
		expr, err := columnFor(name)
		if err != nil || !strings.HasPrefix(expr, "json_extract") {
			continue
		}
		stmt := fmt.Sprintf(`CREATE INDEX IF NOT EXISTS "ix_%s_%s" ON documents (collection, parent, %s)`, c.Name, name, expr)
		if _, err := s.writer.Exec(stmt); err != nil {
			return fmt.Errorf("indexing %s.%s: %w", c.Name, name, err)
		}
	}
	return nil
}

// columnFor maps a field name to its SQL expression. Names are identifiers
// (checked here again), so the JSON path literal cannot be escaped from.
func columnFor(field string) (string, error) {
	switch field {
	case keyField:
		return "key", nil
	case metaCreated, metaModified:
		return field, nil
	}
	if !identifier.MatchString(field) {
		return "", fmt.Errorf("invalid field name %q", field)
	}
	return "json_extract(doc, '$." + field + "')", nil
}

// keyField marks the document key in a ListQuery's Filters and Sort.
const keyField = "\x00key"

const docColumns = `collection, parent, key, doc, owner, version, created_at, modified_at`

const timeLayout = "2006-01-02T15:04:05.000000Z"

func (s *sqliteStore) Get(ctx context.Context, collection, parent, key string) (*Doc, error) {
	row := s.reader.QueryRowContext(ctx, `SELECT `+docColumns+` FROM documents WHERE collection = ? AND parent = ? AND key = ?`, collection, parent, key)
	return scanDoc(row)
}

func (s *sqliteStore) List(ctx context.Context, q ListQuery) ([]*Doc, int, error) {
	where := []string{"collection = ?", "parent = ?"}
	args := []any{q.Collection, q.Parent}
	if q.Owner != "" {
		where = append(where, "owner = ?")
		args = append(args, q.Owner)
	}
	for _, f := range q.Filters {
		col, err := columnFor(f.Field)
		if err != nil {
			return nil, 0, err
		}
		where = append(where, col+" = ?")
		args = append(args, f.Value)
	}
	cond := strings.Join(where, " AND ")
	var total int
	if err := s.reader.QueryRowContext(ctx, `SELECT COUNT(*) FROM documents WHERE `+cond, args...).Scan(&total); err != nil {
		return nil, 0, err
	}
	var order []string
	for _, o := range q.Sort {
		col, err := columnFor(o.Field)
		if err != nil {
			return nil, 0, err
		}
		if o.Desc {
			col += " DESC"
		}
		order = append(order, col)
	}
	order = append(order, "key") // a stable order across pages
	rows, err := s.reader.QueryContext(ctx,
		`SELECT `+docColumns+` FROM documents WHERE `+cond+` ORDER BY `+strings.Join(order, ", ")+` LIMIT ? OFFSET ?`,
		append(args, q.Limit, q.Offset)...)
	if err != nil {
		return nil, 0, err
	}
	defer rows.Close()
	docs := make([]*Doc, 0, q.Limit)
	for rows.Next() {
		d, err := scanDoc(rows)
		if err != nil {
			return nil, 0, err
		}
		docs = append(docs, d)
	}
	return docs, total, rows.Err()
}

func (s *sqliteStore) Update(ctx context.Context, fn func(Tx) error) error {
	tx, err := s.writer.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(sqliteTx{tx}); err != nil {
		_ = tx.Rollback()
		return err
	}
	return tx.Commit()
}

func (s *sqliteStore) Close() error {
	return errors.Join(s.reader.Close(), s.writer.Close())
}

type sqliteTx struct{ tx *sql.Tx }

func (t sqliteTx) Get(collection, parent, key string) (*Doc, error) {
	row := t.tx.QueryRow(`SELECT `+docColumns+` FROM documents WHERE collection = ? AND parent = ? AND key = ?`, collection, parent, key)
	return scanDoc(row)
}

// Pin is Get without the document: SQLite runs one writer at a time.
func (t sqliteTx) Pin(collection, parent, key string) error {
	_, err := t.Get(collection, parent, key)
	return err
}

func (t sqliteTx) Insert(d *Doc) error {
	res, err := t.tx.Exec(`INSERT INTO documents (`+docColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
		d.Collection, d.Parent, d.Key, string(d.Body), d.Owner, d.Version, d.Created.UTC().Format(timeLayout), nullTime(d.Modified))
	return changed(res, err, ErrExists)
}

func (t sqliteTx) Replace(d *Doc) error {
	res, err := t.tx.Exec(`UPDATE documents SET doc = ?, owner = ?, version = ?, modified_at = ? WHERE collection = ? AND parent = ? AND key = ?`,
		string(d.Body), d.Owner, d.Version, nullTime(d.Modified), d.Collection, d.Parent, d.Key)
	return changed(res, err, ErrNotFound)
}

func (t sqliteTx) Delete(collection, parent, key string) error {
	res, err := t.tx.Exec(`DELETE FROM documents WHERE collection = ? AND parent = ? AND key = ?`, collection, parent, key)
	return changed(res, err, ErrNotFound)
}

// changed returns ifNone when a statement changed no row.
func changed(res sql.Result, err error, ifNone error) error {
	if err != nil {
		return err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n == 0 {
		return ifNone
	}
	return nil
}

func (t sqliteTx) CountChildren(collection, parent string) (int, error) {
	var n int
	err := t.tx.QueryRow(`SELECT COUNT(*) FROM documents WHERE collection = ? AND parent = ?`, collection, parent).Scan(&n)
	return n, err
}

func (t sqliteTx) DeleteChildren(collection, parent string) error {
	_, err := t.tx.Exec(`DELETE FROM documents WHERE collection = ? AND parent = ?`, collection, parent)
	return err
}

type scanner interface{ Scan(...any) error }

// scanDoc reads a row of docColumns, after the columns lead scans into
// (the changes table's seq and op).
func scanDoc(row scanner, lead ...any) (*Doc, error) {
	var d Doc
	var body, created string
	var modified sql.NullString
	err := row.Scan(append(lead, &d.Collection, &d.Parent, &d.Key, &body, &d.Owner, &d.Version, &created, &modified)...)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	d.Body = json.RawMessage(body)
	if d.Created, err = time.Parse(timeLayout, created); err != nil {
		return nil, fmt.Errorf("document %s/%s: created_at %q: %w", d.Collection, d.Key, created, err)
	}
	if modified.Valid {
		if d.Modified, err = time.Parse(timeLayout, modified.String); err != nil {
			return nil, fmt.Errorf("document %s/%s: modified_at %q: %w", d.Collection, d.Key, modified.String, err)
		}
	}
	return &d, nil
}

func nullTime(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UTC().Format(timeLayout)
}
