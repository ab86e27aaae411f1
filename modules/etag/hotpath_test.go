package etag

import "testing"

// TestETagFieldOneAllocation: a generated ETag reaches the response header
// as one allocation (the value and its string together), spelled as
// formatETag spells it (two allocations with []string{formatETag(…)}).
func TestETagFieldOneAllocation(t *testing.T) {
	const sum = 0x290370838c287802
	var v []string
	if n := testing.AllocsPerRun(100, func() { v = etagField(sum) }); n != 1 {
		t.Errorf("etagField: %.0f allocations, want 1", n)
	}
	if len(v) != 1 || cap(v) != 1 || v[0] != formatETag(sum) || v[0] != `"290370838c287802"` {
		t.Errorf("etagField = %q (cap %d), want [%q] clipped", v, cap(v), formatETag(sum))
	}
}
