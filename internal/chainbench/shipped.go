package chainbench

import (
	"fmt"
	"os"
	"regexp"
	"strings"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// APISite is the address of the default Caddyfile's API site.
const APISite = "https://api.localhost:"

// Shipped is the default Caddyfile's chain as shipped, read from the file
// itself so that a benchmark of it follows every edit: the API site's
// directives up to its routes (everything but tls, handle_errors, matcher
// definitions and handle blocks), imports expanded.
type Shipped struct {
	// Chain is the whole chain: Caddy's directives (the access log,
	// log_append, the HSTS header) and restgate's (api_errors … api_etag),
	// in the file's order.
	Chain string
	// Caddy is Caddy's own directives of Chain alone: what bare Caddy runs
	// for the same access log and HSTS.
	Caddy string
	// Parts is Chain directive by directive.
	Parts []Part
}

// Part is one directive of the chain, with its block.
type Part struct{ Directive, Text string }

// Part returns the text of the chain's directive d ("" if it has none).
func (s Shipped) Part(d string) string {
	for _, p := range s.Parts {
		if p.Directive == d {
			return p.Text
		}
	}
	return ""
}

// Directives names the chain's directives, in order.
func (s Shipped) Directives() []string {
	out := make([]string, len(s.Parts))
	for i, p := range s.Parts {
		out[i] = p.Directive
	}
	return out
}

// ReadShipped reads the chain of the API site from the Caddyfile at path.
// Its {$VAR:default} placeholders take their values from env, else their
// defaults (the process's environment is not read, so a developer's
// RESTGATE_* settings do not leak into a benchmark). The access log is
// written to logFile instead of the shipped stderr.
func ReadShipped(path string, env map[string]string, logFile string) (Shipped, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return Shipped{}, err
	}
	src = reEnv.ReplaceAllFunc(src, func(m []byte) []byte {
		sub := reEnv.FindSubmatch(m)
		if v, ok := env[string(sub[1])]; ok {
			return []byte(v)
		}
		return sub[3]
	})
	blocks, err := caddyfile.Parse(path, src)
	if err != nil {
		return Shipped{}, err
	}
	for _, sb := range blocks {
		if len(sb.Keys) == 0 || !strings.HasPrefix(sb.Keys[0].Text, APISite) {
			continue
		}
		var out Shipped
		var chain, own strings.Builder
		for _, seg := range sb.Segments {
			d := seg.Directive()
			switch {
			case d == "tls" || d == "handle_errors" || d == "handle" || strings.HasPrefix(d, "@"):
				continue
			case d == "log":
				seg = logTo(seg, logFile)
			}
			text := serialize(seg)
			chain.WriteString(text)
			if !strings.HasPrefix(d, "api_") {
				own.WriteString(text)
			}
			out.Parts = append(out.Parts, Part{d, text})
		}
		out.Chain, out.Caddy = chain.String(), own.String()
		return out, nil
	}
	return Shipped{}, fmt.Errorf("%s: no site %s… (the API site)", path, APISite)
}

// reEnv is a Caddyfile environment placeholder: {$NAME} or {$NAME:default}.
var reEnv = regexp.MustCompile(`\{\$([A-Za-z0-9_]+)(:([^}]*))?\}`)

// logTo points a log directive's output at a file, never rolled: rolling
// gzips the whole file in the server's process every 100 MiB, a second of
// CPU that lands in one measurement window and not the next (a 10 s run
// logs 60–80 MiB), and costs every logger the same per byte.
func logTo(seg caddyfile.Segment, file string) caddyfile.Segment {
	out := make(caddyfile.Segment, 0, len(seg)+4)
	for i := 0; i < len(seg); i++ {
		out = append(out, seg[i])
		if seg[i].Text == "output" && i+1 < len(seg) {
			next := seg[i+1]
			next.Text = "file"
			path := next
			path.Text = file
			// a block of its own lines: serialize breaks a line where the
			// line number changes
			open, roll, closing := path, path, path
			open.Text, roll.Text, closing.Text = "{", "roll_disabled", "}"
			roll.Line, closing.Line = -1, -2
			out = append(out, next, path, open, roll, closing)
			i++
			// drop the shipped output's own arguments
			for i+1 < len(seg) && seg[i+1].Line == seg[i].Line {
				i++
			}
		}
	}
	return out
}

// serialize writes a segment's tokens back as Caddyfile text, a line per
// source line, quoting what needs it.
func serialize(seg caddyfile.Segment) string {
	var b strings.Builder
	for i, t := range seg {
		if i > 0 {
			if t.Line != seg[i-1].Line || t.File != seg[i-1].File {
				b.WriteByte('\n')
			} else {
				b.WriteByte(' ')
			}
		}
		if t.Text == "" || strings.ContainsAny(t.Text, " \t\n\"`") {
			b.WriteString(`"` + strings.ReplaceAll(t.Text, `"`, `\"`) + `"`)
		} else {
			b.WriteString(t.Text)
		}
	}
	b.WriteByte('\n')
	return b.String()
}
