package apiauth

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"github.com/restgate/restgate/internal/flock"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "api-key",
		Usage: "--user <name> [--scopes read,write] [--id <id>] [--expires <RFC 3339 time or duration>] [--out <key file>]",
		Short: "Generates an API key and its key-file entry",
		Long: `
Generates a random API key (256 bits from crypto/rand), prints it once,
and prints the entry for api_auth's key file: only the key's SHA-256 hash
is stored, so the key cannot be shown again.

--out appends the entry to a key file (created with mode 0600 if needed);
a running gateway picks it up within its reload interval. Without --out,
the key goes to standard error and the entry to standard output, so that
  restgate api-key --user alice >> api-keys.yaml
appends the entry (and only the entry) to a key file's keys: list.

  restgate api-key list --file <key file>       the keys: id, user, scopes, expiry (never a hash)
  restgate api-key revoke <id> --file <key file> removes a key (a running gateway drops it within
                                                 its reload interval)`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.Flags().String("user", "", "the user the key authenticates (required)")
			cmd.Flags().String("scopes", "read,write", "comma-separated scopes")
			cmd.Flags().String("id", "", "an id for logs (default: derived from the hash)")
			cmd.Flags().String("expires", "", "when the key expires: an RFC 3339 time, or a duration such as 2160h")
			cmd.Flags().String("out", "", "append the entry to this key file")
			cmd.RunE = caddycmd.WrapCommandFuncForCobra(cmdAPIKey)

			list := &cobra.Command{Use: "list --file <key file>", Short: "Lists the keys of a key file (never their hashes)", Args: cobra.NoArgs}
			list.Flags().String("file", "", "the key file (required)")
			list.RunE = caddycmd.WrapCommandFuncForCobra(cmdAPIKeyList)
			revoke := &cobra.Command{Use: "revoke <id> --file <key file>", Short: "Removes a key from a key file", Args: cobra.ExactArgs(1)}
			revoke.Flags().String("file", "", "the key file (required)")
			revoke.RunE = caddycmd.WrapCommandFuncForCobra(cmdAPIKeyRevoke)
			cmd.AddCommand(list, revoke)
		},
	})
}

// keyPrefix marks restgate keys so that secret scanners can find leaked ones.
const keyPrefix = "rg_"

func cmdAPIKey(fl caddycmd.Flags) (int, error) {
	user := fl.String("user")
	if user == "" {
		return caddy.ExitCodeFailedStartup, errors.New("--user is required")
	}
	var scopes []string
	for _, s := range strings.Split(fl.String("scopes"), ",") {
		if s = strings.TrimSpace(s); s != "" {
			scopes = append(scopes, s)
		}
	}
	entry := KeyEntry{ID: fl.String("id"), User: user, Scopes: scopes}
	if exp := fl.String("expires"); exp != "" {
		t, err := time.Parse(time.RFC3339, exp)
		if err != nil {
			d, derr := time.ParseDuration(exp)
			if derr != nil {
				return caddy.ExitCodeFailedStartup, fmt.Errorf("--expires: want an RFC 3339 time or a duration: %v", err)
			}
			t = time.Now().Add(d)
		}
		entry.Expires = t.UTC().Format(time.RFC3339)
	}
	token, err := newToken()
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	sum := sha256.Sum256([]byte(token))
	entry.SHA256 = hex.EncodeToString(sum[:])
	if _, err := entry.load(); err != nil {
		return caddy.ExitCodeFailedStartup, err
	}

	if out := fl.String("out"); out != "" {
		if err := appendEntry(out, entry); err != nil {
			return caddy.ExitCodeFailedStartup, err
		}
		fmt.Printf("API key for %s (shown once; it is stored only as a hash in %s):\n\n  %s\n\n", user, out, token)
		return 0, nil
	}
	b, err := marshalKeyFile(keyFile{Keys: []KeyEntry{entry}})
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	// the key to the terminal; the entry, as an item of the keys: list, to
	// standard output, so that `>> api-keys.yaml` appends it and only it
	fmt.Fprintf(os.Stderr, "API key for %s (shown once; store it now):\n\n  %s\n\nIts key-file entry follows on standard output.\n", user, token)
	fmt.Print(strings.TrimPrefix(string(b), "keys:\n"))
	return 0, nil
}

func cmdAPIKeyList(fl caddycmd.Flags) (int, error) {
	path := fl.String("file")
	if path == "" {
		return caddy.ExitCodeFailedStartup, errors.New("--file is required")
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	kf, err := decodeKeyFile(path, b)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tUSER\tSCOPES\tEXPIRES")
	for _, e := range kf.Keys {
		k, err := e.load()
		if err != nil {
			return caddy.ExitCodeFailedStartup, fmt.Errorf("%s: %v", path, err)
		}
		expires := "never"
		if e.Expires != "" {
			expires = e.Expires
			if !k.expires.After(time.Now()) {
				expires += " (expired)"
			}
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", k.id, k.user, strings.Join(k.scopes, ","), expires)
	}
	for _, user := range slices.Sorted(maps.Values(kf.APIKeys)) {
		fmt.Fprintf(w, "(plaintext)\t%s\t%s\tnever\n", user, strings.Join(defaultScopes, ","))
	}
	return 0, w.Flush()
}

func cmdAPIKeyRevoke(fl caddycmd.Flags) (int, error) {
	path, id := fl.String("file"), fl.Arg(0)
	if path == "" {
		return caddy.ExitCodeFailedStartup, errors.New("--file is required")
	}
	err := editKeyFile(path, false, func(kf *keyFile) error {
		for i, e := range kf.Keys {
			k, err := e.load()
			if err == nil && k.id == id {
				kf.Keys = slices.Delete(kf.Keys, i, i+1)
				return nil
			}
		}
		return fmt.Errorf("no key with id %q in %s (see `restgate api-key list --file %s`)", id, path, path)
	})
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	fmt.Printf("revoked %s; a running gateway stops accepting it within its reload interval\n", id)
	return 0, nil
}

func newToken() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return keyPrefix + base64.RawURLEncoding.EncodeToString(b), nil
}

// appendEntry adds an entry to a key file, writing a new file and renaming
// it over the old one so that a watching gateway never reads half a file,
// under a lock so that concurrent runs never lose an entry.
func appendEntry(path string, e KeyEntry) error {
	return editKeyFile(path, true, func(kf *keyFile) error {
		kf.Keys = append(kf.Keys, e)
		return nil
	})
}

// decodeKeyFile reads a key file's content; an empty one has no keys.
func decodeKeyFile(path string, b []byte) (keyFile, error) {
	var kf keyFile
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&kf); err != nil && len(bytes.TrimSpace(b)) > 0 {
		return kf, fmt.Errorf("%s is not a key file: %v", path, err)
	}
	return kf, nil
}

// editKeyFile changes a key file under its lock, writing a new file and
// renaming it over the old one so that a watching gateway never reads half
// a file. create allows a file that does not exist yet.
func editKeyFile(path string, create bool, edit func(*keyFile) error) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	unlock, err := flock.Lock(path + ".lock")
	if err != nil {
		return err
	}
	defer unlock()
	var kf keyFile
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist) && create:
	case err != nil:
		return err
	default:
		if kf, err = decodeKeyFile(path, b); err != nil {
			return err
		}
	}
	if err := edit(&kf); err != nil {
		return err
	}
	out, err := marshalKeyFile(kf)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".api-keys-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(out); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func marshalKeyFile(kf keyFile) ([]byte, error) {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(kf); err != nil {
		return nil, err
	}
	err := enc.Close()
	return buf.Bytes(), err
}
