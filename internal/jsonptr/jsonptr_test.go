package jsonptr

import "testing"

func TestEscape(t *testing.T) {
	for give, want := range map[string]string{"name": "name", "a/b": "a~1b", "m~n": "m~0n", "~/": "~0~1", "": ""} {
		if got := Escape(give); got != want {
			t.Errorf("Escape(%q) = %q, want %q", give, got, want)
		}
	}
}
