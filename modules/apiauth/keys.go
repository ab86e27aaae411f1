package apiauth

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/restgate/restgate/internal/identity"
)

// KeyEntry describes one API key by the SHA-256 hash of the key; the key
// itself is never stored.
type KeyEntry struct {
	// An identifier for logs and placeholders. Default: derived from the hash
	// (never the hash itself).
	ID string `json:"id,omitempty" yaml:"id,omitempty"`

	// The user the key authenticates: also its principal, the name the
	// cache, Idempotency-Key records, rate limits and owned resources know
	// it by. It may not start with `jwt:`, which begins the principals of
	// tokens.
	User string `json:"user" yaml:"user"`

	// The lowercase hex SHA-256 of the key.
	SHA256 string `json:"sha256" yaml:"sha256"`

	// The key's scopes, e.g. read, write, admin. Scopes are independent: a
	// key that should do everything lists them all.
	Scopes []string `json:"scopes,omitempty" yaml:"scopes,omitempty"`

	// When the key stops working (RFC 3339). Default: never.
	Expires string `json:"expires,omitempty" yaml:"expires,omitempty"`
}

// key is a loaded KeyEntry.
type key struct {
	id      string
	user    string
	hash    [sha256.Size]byte
	scopes  []string
	expires time.Time

	// header and placeholder values, built once and shared read-only by
	// every request (the `any` ones are boxed once, not per request)
	userHeader   []string
	scopesHeader []string
	scopesString string
	userAny      any
	scopesAny    any
	idAny        any
	issuerAny    any      // for a token, its issuer; nil for an API key
	principalAny any      // identity.Qualified: the user, or a token's qualified subject
	issuerHeader []string // the issuer header when the principal is qualified; nil otherwise
}

// newKey builds the principal of an API key or a verified token, with its
// header and placeholder values made once.
func newKey(id, user string, scopes []string) *key {
	k := &key{id: id, user: user, scopes: scopes}
	k.scopesString = strings.Join(k.scopes, " ")
	k.userAny, k.scopesAny, k.idAny, k.principalAny = k.user, k.scopesString, k.id, k.user
	k.userHeader = []string{k.user}
	k.scopesHeader = []string{k.scopesString}
	return k
}

// qualify makes a token's user a principal of its issuer's, told to the
// backend in the issuer header.
func (k *key) qualify(issuer string) {
	k.principalAny = identity.Qualified(k.user, issuer)
	k.issuerHeader = []string{issuer}
}

func (k *key) has(scope string) bool { return slices.Contains(k.scopes, scope) }

// keySet is an immutable table of keys by hash; a reload swaps in a new one.
type keySet struct {
	byHash map[[sha256.Size]byte]*key
}

// keyFile is the YAML key file. `keys` holds hashed entries; `api_keys` is
// Asimov's plaintext `{token: username}` form, hashed on load.
type keyFile struct {
	Keys    []KeyEntry        `yaml:"keys,omitempty"`
	APIKeys map[string]string `yaml:"api_keys,omitempty"`
}

// defaultScopes are what a plaintext key (env var or `api_keys`) gets.
var defaultScopes = []string{"read", "write"}

// errEmptyKeyFile is an empty key file: most often one caught between an
// editor's truncate and its write, so it is not read as "no keys".
var errEmptyKeyFile = errors.New("the key file is empty (to remove every key on purpose, write `keys: []`)")

// parseKeyFile reads the content of a key file; plaintext keys in it are
// hashed and counted.
func parseKeyFile(path string, b []byte) (entries []KeyEntry, plaintext int, err error) {
	if len(bytes.TrimSpace(b)) == 0 {
		return nil, 0, fmt.Errorf("%s: %w", path, errEmptyKeyFile)
	}
	var kf keyFile
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&kf); err != nil && !errors.Is(err, io.EOF) {
		return nil, 0, fmt.Errorf("parsing %s: %v", path, err)
	}
	entries = kf.Keys
	for token, user := range kf.APIKeys {
		entries = append(entries, plainEntry(token, user))
	}
	return entries, len(kf.APIKeys), nil
}

// plainEntry hashes a plaintext token for user with the default scopes.
func plainEntry(token, user string) KeyEntry {
	sum := sha256.Sum256([]byte(token))
	return KeyEntry{User: user, SHA256: hex.EncodeToString(sum[:]), Scopes: defaultScopes}
}

// parseEnvKeys reads RESTGATE_API_KEY: `token:username`, several separated
// by commas.
func parseEnvKeys(v string) ([]KeyEntry, error) {
	var out []KeyEntry
	for _, part := range strings.Split(v, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		token, user, ok := strings.Cut(part, ":")
		if !ok || token == "" || user == "" {
			return nil, fmt.Errorf("RESTGATE_API_KEY: want token:username")
		}
		out = append(out, plainEntry(token, user))
	}
	return out, nil
}

// build turns entries into a key set; later entries win over earlier ones
// with the same hash.
func build(entries []KeyEntry) (*keySet, error) {
	ks := &keySet{byHash: make(map[[sha256.Size]byte]*key, len(entries))}
	for i, e := range entries {
		k, err := e.load()
		if err != nil {
			return nil, fmt.Errorf("key %d (%s): %v", i+1, e.User, err)
		}
		ks.byHash[k.hash] = k
	}
	return ks, nil
}

func (e KeyEntry) load() (*key, error) {
	if e.User == "" {
		return nil, fmt.Errorf("no user")
	}
	if strings.ContainsAny(e.User, "\r\n\x00") || len(e.User) > 256 {
		return nil, fmt.Errorf("invalid user name")
	}
	if identity.ReservedUser(e.User) {
		return nil, fmt.Errorf("a key's user may not start with %q, which begins the principals of signed tokens", identity.TokenPrincipalPrefix)
	}
	raw, err := hex.DecodeString(strings.ToLower(strings.TrimSpace(e.SHA256)))
	if err != nil || len(raw) != sha256.Size {
		return nil, fmt.Errorf("sha256 must be 64 hex digits")
	}
	var hash [sha256.Size]byte
	copy(hash[:], raw)
	id := e.ID
	if id == "" {
		// an id that names the key in logs without revealing its hash
		h := sha256.Sum256(hash[:])
		id = "key-" + hex.EncodeToString(h[:4])
	}
	for _, s := range e.Scopes {
		if s == "" || strings.ContainsAny(s, " ,\r\n") {
			return nil, fmt.Errorf("invalid scope %q", s)
		}
	}
	k := newKey(id, e.User, e.Scopes)
	k.hash = hash
	if e.Expires != "" {
		if k.expires, err = time.Parse(time.RFC3339, e.Expires); err != nil {
			return nil, fmt.Errorf("expires: %v", err)
		}
	}
	return k, nil
}
