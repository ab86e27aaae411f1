package ratelimit

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dunglas/httpsfv"

	"github.com/restgate/restgate/internal/identity"
)

// Zone is one limit: Events per Window for each key, with bursts up to Burst.
type Zone struct {
	// The zone's name: it appears in the headers (as a Structured Fields
	// string, so printable ASCII only) and the problem body, so keep it short
	// and meaningful (`per-user`, `per-ip`).
	Name string `json:"name"`

	// What the buckets are keyed on: a placeholder template such as
	// `{http.auth.user.principal}` or `{http.request.header.X-Tenant}`.
	// Default: the authenticated principal (`{http.auth.user.principal}`:
	// an API key's user, or a token's subject qualified by its issuer, so
	// that `alice` of a key and `sub: alice` of a token never share a
	// bucket), else the client IP. `{http.auth.user.id}` is the bare user
	// or subject, which every issuer's `alice` shares.
	// A key that evaluates empty falls back to the client IP, never to one
	// bucket shared by everyone. `{client_ip}` keys on the client IP alone
	// (Caddy's, which honours `trusted_proxies`).
	Key string `json:"key,omitempty"`

	// How many requests a key may make per window.
	Events int `json:"events"`

	// The window. Default: 1s.
	Window caddy.Duration `json:"window,omitempty"`

	// How many requests a key may make at once. Default: Events.
	Burst int `json:"burst,omitempty"`

	// Only requests with these methods count in this zone. Default: all.
	Methods caddyhttp.MatchMethod `json:"methods,omitempty"`

	// Only requests with these paths count (Caddy path matcher syntax).
	// Default: all.
	Paths caddyhttp.MatchPath `json:"paths,omitempty"`

	// IPv6 client addresses are keyed by this prefix length. Default: 64.
	IPv6Prefix int `json:"ipv6_prefix,omitempty"`

	// The most keys the zone remembers; the least recently seen are
	// forgotten first. Default: 100000.
	MaxKeys int `json:"max_keys,omitempty"`

	perSecond    float64
	burst        int
	quotedName   string // the name as an sf-string, for RateLimit items
	policy       string // the zone's RateLimit-Policy list member
	policyHeader []string
	poolKey      string
	state        *zoneState
	counters     zoneCounters
	redisPrefix  string // the zone's bucket keys in Redis, once computed
}

const defaultMaxKeys = 100_000

// zoneState is what survives a config reload.
type zoneState struct {
	store Store
}

func (zs *zoneState) Destruct() error { return nil }

// zones shares zone state across config reloads. The pool key is the
// zone's name, key template and matchers: a zone whose rate changes keeps
// its buckets, and zones that count different things never share one.
var zones = caddy.NewUsagePool()

func (z *Zone) provision(ctx caddy.Context) error {
	if z.Window == 0 {
		z.Window = caddy.Duration(time.Second)
	}
	if z.Burst == 0 {
		z.Burst = z.Events
	}
	if z.IPv6Prefix == 0 {
		z.IPv6Prefix = 64
	}
	if z.MaxKeys == 0 {
		z.MaxKeys = defaultMaxKeys
	}
	if err := z.validate(); err != nil {
		return err
	}
	if len(z.Paths) > 0 {
		if err := z.Paths.Provision(ctx); err != nil {
			return err
		}
	}
	z.perSecond = float64(z.Events) / time.Duration(z.Window).Seconds()
	z.burst = z.Burst
	var err error
	if z.quotedName, err = httpsfv.Marshal(httpsfv.NewItem(z.Name)); err != nil {
		return err
	}
	policy := httpsfv.NewItem(z.Name)
	policy.Params.Add("q", int64(z.Events))
	policy.Params.Add("w", ceilSeconds(time.Duration(z.Window)))
	if z.policy, err = httpsfv.Marshal(policy); err != nil {
		return err
	}
	z.policyHeader = slices.Clip([]string{z.policy})
	methods := slices.Clone([]string(z.Methods))
	slices.Sort(methods)
	paths := slices.Clone([]string(z.Paths))
	slices.Sort(paths)
	z.poolKey = strings.Join([]string{z.Name, z.Key, strings.Join(methods, ","), strings.Join(paths, ",")}, "\x00")
	val, _, err := zones.LoadOrNew(z.poolKey, func() (caddy.Destructor, error) {
		s, err := newMemStore(z.MaxKeys)
		if err != nil {
			return nil, err
		}
		return &zoneState{store: s}, nil
	})
	if err != nil {
		z.poolKey = ""
		return err
	}
	z.state = val.(*zoneState)
	z.state.store.Resize(z.MaxKeys)
	return nil
}

func (z *Zone) validate() error {
	switch {
	case !validName(z.Name):
		return fmt.Errorf("name must be 1 to 64 printable ASCII characters (letters, digits, punctuation; no spaces), as it is sent in the RateLimit headers")
	case z.Events < 1:
		return fmt.Errorf("events must be at least 1")
	case z.Window != 0 && time.Duration(z.Window) < time.Millisecond:
		return fmt.Errorf("window must be at least 1ms")
	case z.Burst < 0:
		return fmt.Errorf("burst must not be negative")
	case z.IPv6Prefix < 0 || z.IPv6Prefix > 128:
		return fmt.Errorf("ipv6_prefix must be 0 to 128")
	case z.MaxKeys < 0:
		return fmt.Errorf("max_keys must not be negative")
	}
	return nil
}

// validName reports whether name is 1 to 64 visible ASCII characters: each
// such name serialises as a Structured Fields string (RFC 9651 §3.3.3),
// and without spaces it reads well in logs and problem bodies.
func validName(name string) bool {
	if name == "" || len(name) > 64 {
		return false
	}
	for i := 0; i < len(name); i++ {
		if name[i] <= ' ' || name[i] >= 0x7f {
			return false
		}
	}
	_, err := httpsfv.Marshal(httpsfv.NewItem(name))
	return err == nil
}

func (z *Zone) release() error {
	if z.poolKey == "" {
		return nil
	}
	_, err := zones.Delete(z.poolKey)
	return err
}

func (z *Zone) applies(r *http.Request) bool {
	if len(z.Methods) > 0 && !z.Methods.Match(r) {
		return false
	}
	if len(z.Paths) > 0 && !z.Paths.Match(r) {
		return false
	}
	return true
}

// keyFor returns the bucket key for r. The default and `{client_ip}` keys
// are read without building strings.
func (z *Zone) keyFor(r *http.Request, repl *caddy.Replacer) string {
	switch z.Key {
	case "":
		if repl != nil {
			if p := identity.PrincipalOf(repl); p != "" {
				return p
			}
		}
	case "{client_ip}":
	default:
		if repl == nil {
			repl, _ = r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
		}
		// a template that nothing replaced would be one bucket for everyone
		if repl != nil {
			if k := repl.ReplaceKnown(z.Key, ""); k != "" && k != z.Key {
				return k
			}
		}
	}
	return clientIP(r, z.IPv6Prefix)
}
