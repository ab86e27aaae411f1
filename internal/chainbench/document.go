package chainbench

import "bytes"

// Doc is the upstream's fixed 1 KiB JSON document: what the backend of
// `make bench` and BenchmarkChain's in-memory upstream both answer.
var Doc = func() []byte {
	var b bytes.Buffer
	b.WriteString(`{"name":"GW150914","pipeline":"bilby","status":"ready","meta":{"padding":"`)
	for b.Len() < 1024-3 {
		b.WriteByte('x')
	}
	b.WriteString(`"}}`)
	return b.Bytes()
}()
