package apiauth

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	lru "github.com/hashicorp/golang-lru/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/restgate/restgate/internal/identity"
)

// JWTIssuer accepts signed bearer tokens (JWTs, SciTokens) from one issuer,
// verified against the issuer's JSON Web Key Set.
//
// A token is recognised by its shape (three base64url parts, a JOSE header
// naming an algorithm); anything else in `Authorization: Bearer` is tried
// as an API key. A token is accepted only if its signature verifies with a
// key of the issuer's JWKS (by `kid`) using an allowed algorithm that fits
// the key's type, its JOSE `typ` is an accepted token type, its `iss` is
// the issuer, its `aud` names an accepted audience, it has an `exp` and is
// within `exp`, `nbf` and `iat` (with Leeway), and it names a user. Every
// token that fails any check gets the same 401; the debug log says which
// check failed.
//
// A token's user is a principal of its own, `jwt:<issuer> <subject>`
// (identity.Qualified): the cache, Idempotency-Key records, rate-limit
// buckets and owned resources never confuse it with an API key's user of
// the same name, nor with another issuer's subject. The backend gets the
// subject in the user header and the issuer in `X-Auth-Issuer`.
type JWTIssuer struct {
	// The issuer, exactly as the tokens' `iss` claim names it. It may not
	// contain spaces or control characters.
	Issuer string `json:"issuer"`

	// Where the issuer's JWKS is (HTTPS only). Default: the `jwks_uri` of
	// the issuer's OpenID discovery document
	// (`<issuer>/.well-known/openid-configuration`).
	JWKSURL string `json:"jwks_url,omitempty"`

	// The audiences accepted; a token must name one of them. Required.
	Audience []string `json:"audience,omitempty"`

	// The signature algorithms accepted. Default: RS256, ES256, EdDSA.
	// `none` and the HMAC algorithms (HS*) are never accepted.
	Algorithms []string `json:"algorithms,omitempty"`

	// The claim that names the user. Default: `sub`.
	UserClaim string `json:"user_claim,omitempty"`

	// The JOSE header `typ` values accepted (RFC 8725 §3.11): compared
	// case-insensitively, with or without the `application/` prefix. A
	// token without `typ` matches none of them. `any` turns the check off.
	// Default: `at+jwt`, the access-token type of RFC 9068, so that an ID
	// token (typed `JWT`, or untyped) is refused even when its `aud`
	// happens to name this API. For an issuer that does not type its
	// access tokens, list what it sends (`JWT`) or `any`, and make sure its
	// ID tokens never carry an audience listed here.
	TokenTypes []string `json:"token_types,omitempty"`

	// The issuer's subjects are the key file's users: a token with `sub:
	// alice` is the API key user `alice` (her cached answers, her
	// Idempotency-Key records, her rate-limit bucket, her owned documents),
	// and no `X-Auth-Issuer` is sent. Only for an issuer the operator
	// trusts to name exactly the key file's users. Default: off, the
	// token's subject is its own principal, qualified by the issuer.
	SubjectsAreKeyUsers bool `json:"subjects_are_key_users,omitempty"`

	// The claim that holds the scopes: a space-separated string (SciTokens,
	// OAuth 2.0) or a list of strings. Default: `scope`.
	ScopeClaim string `json:"scope_claim,omitempty"`

	// Token scope → restgate scope (e.g. `storage.read:/` → `read`). A
	// token scope with no entry is kept as it is.
	ScopeMap map[string]string `json:"scope_map,omitempty"`

	// Clock skew tolerated on `exp`, `nbf` and `iat`. Default: 30s.
	Leeway caddy.Duration `json:"leeway,omitempty"`

	// A PEM file of CA certificates to trust for the JWKS endpoint, besides
	// the system's (for a private issuer).
	CAFile string `json:"ca_file,omitempty"`

	// How often the JWKS is fetched again when its response has no
	// Cache-Control max-age. Default: 1h. A max-age is honoured between
	// MinRefetch and 24h.
	Refresh caddy.Duration `json:"refresh,omitempty"`

	// The least time between two fetches: a token with an unknown `kid`
	// causes at most one fetch per interval (no fetch storm from forged
	// tokens), and a failed fetch is retried after it. Default: 1m.
	MinRefetch caddy.Duration `json:"min_refetch,omitempty"`

	algs      []jose.SignatureAlgorithm
	types     []string                           // the accepted typ values, normalised; nil accepts any
	keys      atomic.Pointer[jose.JSONWebKeySet] // nil until the first fetch succeeds
	client    *http.Client
	fetchMu   sync.Mutex
	lastFetch time.Time
	failing   bool // the last fetch failed (logged once per streak)
	logger    *zap.Logger
	now       func() time.Time
}

// The defaults.
const (
	defaultLeeway     = 30 * time.Second
	defaultRefresh    = time.Hour
	defaultMinRefetch = time.Minute
	maxRefresh        = 24 * time.Hour
	maxTokenLen       = 8 << 10
	maxJWKSBytes      = 1 << 20
)

var defaultAlgorithms = []string{"RS256", "ES256", "EdDSA"}

// defaultTokenTypes accepts access tokens only (RFC 9068 §2.1).
var defaultTokenTypes = []string{"at+jwt"}

// anyTokenType in TokenTypes turns the typ check off.
const anyTokenType = "any"

// normalTokenType is a `typ` value as RFC 7515 §4.1.9 compares it: media
// types are case-insensitive and `application/` may be left out.
func normalTokenType(typ string) string {
	typ = strings.ToLower(strings.TrimSpace(typ))
	return strings.TrimPrefix(typ, "application/")
}

// asymmetric are the algorithms a JWKS of public keys can verify.
var asymmetric = []jose.SignatureAlgorithm{
	jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512,
	jose.ES256, jose.ES384, jose.ES512, jose.EdDSA,
}

func (j *JWTIssuer) provision(ctx caddy.Context, logger *zap.Logger, now func() time.Time) error {
	j.logger, j.now = logger.With(zap.String("issuer", j.Issuer)), now
	if j.Issuer == "" {
		return fmt.Errorf("jwt: an issuer is required")
	}
	if !identity.ValidIssuer(j.Issuer) {
		return fmt.Errorf("jwt %q: an issuer may not contain spaces or control characters (it qualifies its tokens' users and is sent in %s)", j.Issuer, identity.IssuerHeader)
	}
	if len(j.Audience) == 0 {
		return fmt.Errorf("jwt %s: audience is required (the tokens' aud must name this API)", j.Issuer)
	}
	if len(j.Algorithms) == 0 {
		j.Algorithms = defaultAlgorithms
	}
	for _, a := range j.Algorithms {
		alg := jose.SignatureAlgorithm(a)
		if !slices.Contains(asymmetric, alg) {
			return fmt.Errorf("jwt %s: algorithm %q is not accepted (use RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, ES512 or EdDSA; never none or HS*)", j.Issuer, a)
		}
		j.algs = append(j.algs, alg)
	}
	if j.UserClaim == "" {
		j.UserClaim = "sub"
	}
	if len(j.TokenTypes) == 0 {
		j.TokenTypes = defaultTokenTypes
	}
	j.types = nil
	for _, t := range j.TokenTypes {
		switch n := normalTokenType(t); {
		case n == anyTokenType && len(j.TokenTypes) > 1:
			return fmt.Errorf("jwt %s: token_types: `any` accepts every type; list no other", j.Issuer)
		case n == anyTokenType:
		case n == "":
			return fmt.Errorf("jwt %s: token_types: an empty type", j.Issuer)
		default:
			j.types = append(j.types, n)
		}
	}
	if j.ScopeClaim == "" {
		j.ScopeClaim = "scope"
	}
	if j.Leeway == 0 {
		j.Leeway = caddy.Duration(defaultLeeway)
	}
	if j.Refresh == 0 {
		j.Refresh = caddy.Duration(defaultRefresh)
	}
	if j.MinRefetch == 0 {
		j.MinRefetch = caddy.Duration(defaultMinRefetch)
	}
	tlsConfig := &tls.Config{MinVersion: tls.VersionTLS12}
	if j.CAFile != "" {
		pem, err := os.ReadFile(j.CAFile)
		if err != nil {
			return fmt.Errorf("jwt %s: ca_file: %v", j.Issuer, err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("jwt %s: ca_file %s holds no PEM certificate", j.Issuer, j.CAFile)
		}
		tlsConfig.RootCAs = pool
	}
	j.client = &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: tlsConfig, Proxy: http.ProxyFromEnvironment},
		CheckRedirect: func(req *http.Request, _ []*http.Request) error {
			if req.URL.Scheme != "https" {
				return errors.New("the JWKS may only be fetched over HTTPS")
			}
			return nil
		},
	}
	check := j.JWKSURL
	if check == "" {
		check = j.Issuer // discovery is fetched from the issuer
	}
	if u, err := url.Parse(check); err != nil || u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("jwt %s: the JWKS must come over HTTPS: set jwks_url to an https:// URL (or use an https:// issuer for discovery)", j.Issuer)
	}
	// the first fetch, now, so that tokens work from the start; an issuer
	// that is down does not stop the gateway, but its tokens are refused
	// until its keys arrive
	fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	maxAge, err := j.fetch(fctx)
	if err != nil {
		j.logger.Warn("the issuer's JWKS cannot be fetched yet: its tokens are refused until it can; retrying in the background",
			zap.Error(err))
	}
	go j.refreshLoop(ctx, j.nextRefresh(maxAge, err))
	return nil
}

// nextRefresh is when to fetch the JWKS again after a fetch: when its
// max-age runs out (within [MinRefetch, 24h]), after Refresh without one,
// and after MinRefetch when it failed.
func (j *JWTIssuer) nextRefresh(maxAge time.Duration, err error) time.Duration {
	switch {
	case err != nil:
		return time.Duration(j.MinRefetch)
	case maxAge > 0:
		return min(max(maxAge, time.Duration(j.MinRefetch)), maxRefresh)
	}
	return time.Duration(j.Refresh)
}

// refreshLoop fetches the JWKS again when it expires, until ctx ends.
func (j *JWTIssuer) refreshLoop(ctx caddy.Context, next time.Duration) {
	for {
		t := time.NewTimer(next)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		maxAge, err := j.fetch(fctx)
		cancel()
		next = j.nextRefresh(maxAge, err)
	}
}

// refetch fetches the JWKS again for a `kid` it does not know, at most
// once per MinRefetch, and says whether it did.
func (j *JWTIssuer) refetch(ctx context.Context) bool {
	j.fetchMu.Lock()
	recent := j.now().Sub(j.lastFetch) < time.Duration(j.MinRefetch)
	j.fetchMu.Unlock()
	if recent {
		return false
	}
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_, err := j.fetch(fctx)
	return err == nil
}

// fetch gets the JWKS (and first the discovery document, without a
// jwks_url); on success it replaces the keys and returns the response's
// max-age. A failure keeps the last good keys.
func (j *JWTIssuer) fetch(ctx context.Context) (maxAge time.Duration, err error) {
	j.fetchMu.Lock()
	defer j.fetchMu.Unlock()
	if !j.lastFetch.IsZero() && j.now().Sub(j.lastFetch) < time.Duration(j.MinRefetch)/2 {
		return 0, nil // another request just fetched
	}
	j.lastFetch = j.now()
	defer func() {
		switch {
		case err != nil && !j.failing:
			j.failing = true
			j.logger.Error("fetching the issuer's JWKS failed; keeping the last good keys", zap.Error(err))
		case err == nil && j.failing:
			j.failing = false
			j.logger.Info("the issuer's JWKS can be fetched again")
		}
	}()
	jwksURL := j.JWKSURL
	if jwksURL == "" {
		var doc struct {
			JWKSURI string `json:"jwks_uri"`
		}
		if _, err := j.getJSON(ctx, strings.TrimSuffix(j.Issuer, "/")+"/.well-known/openid-configuration", &doc); err != nil {
			return 0, fmt.Errorf("discovery: %w", err)
		}
		if u, err := url.Parse(doc.JWKSURI); err != nil || u.Scheme != "https" {
			return 0, fmt.Errorf("discovery: jwks_uri %q is not an https:// URL", doc.JWKSURI)
		}
		jwksURL = doc.JWKSURI
	}
	var set jose.JSONWebKeySet
	hdr, err := j.getJSON(ctx, jwksURL, &set)
	if err != nil {
		return 0, err
	}
	// public signing keys only: a symmetric key in a JWKS is never used
	var keys []jose.JSONWebKey
	for _, k := range set.Keys {
		if k.Valid() && k.IsPublic() && (k.Use == "" || k.Use == "sig") {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return 0, errors.New("the JWKS holds no public signing key")
	}
	j.keys.Store(&jose.JSONWebKeySet{Keys: keys})
	if cc := hdr.Get("Cache-Control"); cc != "" {
		for _, d := range strings.Split(cc, ",") {
			name, val, _ := strings.Cut(strings.TrimSpace(d), "=")
			if strings.EqualFold(name, "max-age") {
				if n, err := strconv.Atoi(strings.Trim(val, `"`)); err == nil && n >= 0 {
					maxAge = time.Duration(n) * time.Second
				}
			}
		}
	}
	return maxAge, nil
}

func (j *JWTIssuer) getJSON(ctx context.Context, u string, dst any) (http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	if req.URL.Scheme != "https" {
		return nil, fmt.Errorf("%s: only https:// is accepted", u)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := j.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
	if err != nil {
		return nil, err
	}
	if len(body) > maxJWKSBytes {
		return nil, fmt.Errorf("GET %s: larger than %d bytes", u, maxJWKSBytes)
	}
	return resp.Header, json.Unmarshal(body, dst)
}

// looksLikeJWT reports whether a bearer token has the shape of a signed
// JWT: three base64url parts whose first is a JOSE header with an `alg`.
func looksLikeJWT(token string) bool {
	if strings.Count(token, ".") != 2 {
		return false
	}
	head, _, _ := strings.Cut(token, ".")
	if head == "" || len(head) > 4096 {
		return false
	}
	raw, err := base64.RawURLEncoding.DecodeString(head)
	if err != nil {
		return false
	}
	var h struct {
		Alg *string `json:"alg"`
	}
	return json.Unmarshal(raw, &h) == nil && h.Alg != nil
}

// tokenClaims are the claims read from a verified token besides the
// registered ones.
type tokenClaims map[string]any

// errBadToken is the one refusal of every bad token; the reason goes to
// the debug log only.
var errBadToken = errors.New("invalid token")

// verifiedTokens caches tokens whose signature and claims were checked,
// by a hash of the token, never past their `exp`.
type verifiedTokens struct {
	cache *lru.Cache[[sha256.Size]byte, *verifiedToken]
}

type verifiedToken struct {
	k       *key
	expires time.Time
	keys    *jose.JSONWebKeySet // the key set it was verified with: a new set (rotation) verifies again
	issuer  *JWTIssuer
}

const verifiedCacheSize = 10_000

// verifyJWT checks a token against the configured issuers and returns the
// principal it names.
func (h *Handler) verifyJWT(ctx context.Context, token string) (*key, error) {
	if len(token) > maxTokenLen {
		return nil, h.refuseToken("token longer than 8 KiB")
	}
	sum := sha256.Sum256([]byte(token))
	now := h.now()
	if k := h.cachedToken(sum, now); k != nil {
		return k, nil
	}
	parsed, err := jwt.ParseSigned(token, asymmetric)
	if err != nil {
		return nil, h.refuseToken("not a signed JWT with an accepted algorithm: " + err.Error())
	}
	var unverified jwt.Claims
	if err := parsed.UnsafeClaimsWithoutVerification(&unverified); err != nil {
		return nil, h.refuseToken("unreadable claims")
	}
	iss := h.issuer(unverified.Issuer)
	if iss == nil {
		return nil, h.refuseToken("unknown issuer")
	}
	if len(parsed.Headers) != 1 || !slices.Contains(iss.algs, jose.SignatureAlgorithm(parsed.Headers[0].Algorithm)) {
		return nil, h.refuseToken("algorithm not accepted for this issuer")
	}
	hdr := parsed.Headers[0]
	if !iss.typeAccepted(hdr) {
		return nil, h.refuseToken("token type (typ) not accepted for this issuer")
	}
	var std jwt.Claims
	var custom tokenClaims
	verified := false
	for attempt := 0; attempt < 2 && !verified; attempt++ {
		for _, k := range iss.candidates(hdr) {
			if parsed.Claims(k.Key, &std, &custom) == nil {
				verified = true
				break
			}
		}
		if !verified && (attempt > 0 || !iss.refetch(ctx)) {
			break
		}
	}
	if !verified {
		return nil, h.refuseToken("no key of the issuer verifies the signature (unknown kid, or tampered)")
	}
	if std.Expiry == nil {
		return nil, h.refuseToken("no exp")
	}
	if err := std.ValidateWithLeeway(jwt.Expected{Issuer: iss.Issuer, AnyAudience: iss.Audience, Time: now}, time.Duration(iss.Leeway)); err != nil {
		return nil, h.refuseToken(err.Error())
	}
	user, _ := custom[iss.UserClaim].(string)
	if user == "" || len(user) > 256 || strings.ContainsAny(user, "\r\n\x00") {
		return nil, h.refuseToken("no usable user claim " + iss.UserClaim)
	}
	id := std.ID
	if id == "" {
		id = "jwt-" + base64.RawURLEncoding.EncodeToString(sum[:6])
	}
	k := newKey(id, user, iss.scopes(custom[iss.ScopeClaim]))
	k.issuerAny = iss.Issuer
	switch {
	case !iss.SubjectsAreKeyUsers:
		k.qualify(iss.Issuer)
	case identity.ReservedUser(user):
		// as a key user it would be another issuer's principal
		return nil, h.refuseToken("a key user's name may not start with " + identity.TokenPrincipalPrefix)
	}
	expires := std.Expiry.Time().Add(time.Duration(iss.Leeway))
	h.verified.cache.Add(sum, &verifiedToken{k: k, expires: expires, keys: iss.keys.Load(), issuer: iss})
	return k, nil
}

// cachedToken returns the principal of a token verified before, while it
// is unexpired and its issuer's keys are the ones it was verified with.
func (h *Handler) cachedToken(sum [sha256.Size]byte, now time.Time) *key {
	v, ok := h.verified.cache.Get(sum)
	if !ok {
		return nil
	}
	if now.Before(v.expires) && v.issuer.keys.Load() == v.keys {
		return v.k
	}
	h.verified.cache.Remove(sum)
	return nil
}

func (h *Handler) issuer(name string) *JWTIssuer {
	for _, j := range h.JWT {
		if j.Issuer == name {
			return j
		}
	}
	return nil
}

func (h *Handler) refuseToken(reason string) error {
	if c := h.logger.Check(zapcore.DebugLevel, "bearer token refused"); c != nil {
		c.Write(zap.String("reason", reason))
	}
	return errBadToken
}

// typeAccepted reports whether a token's `typ` is one the issuer accepts.
func (j *JWTIssuer) typeAccepted(hdr jose.Header) bool {
	if j.types == nil {
		return true
	}
	typ, _ := hdr.ExtraHeaders[jose.HeaderType].(string)
	return typ != "" && slices.Contains(j.types, normalTokenType(typ))
}

// candidates are the keys that may have signed a token with this header:
// by `kid`, and of a type that fits the algorithm.
func (j *JWTIssuer) candidates(hdr jose.Header) []jose.JSONWebKey {
	set := j.keys.Load()
	if set == nil {
		return nil
	}
	keys := set.Keys
	if hdr.KeyID != "" {
		keys = set.Key(hdr.KeyID)
	}
	var out []jose.JSONWebKey
	for _, k := range keys {
		if k.Algorithm == "" || k.Algorithm == hdr.Algorithm {
			out = append(out, k)
		}
	}
	return out
}

// scopes reads the scope claim (a space-separated string or a list) and
// maps each scope.
func (j *JWTIssuer) scopes(claim any) []string {
	var raw []string
	switch v := claim.(type) {
	case string:
		raw = strings.Fields(v)
	case []any:
		for _, s := range v {
			if str, ok := s.(string); ok {
				raw = append(raw, strings.Fields(str)...)
			}
		}
	}
	var out []string
	for _, s := range raw {
		if m, ok := j.ScopeMap[s]; ok {
			s = m
		}
		if s != "" && !strings.ContainsAny(s, ",\r\n") && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}
