package instance

import (
	"strings"
	"testing"
)

func TestCheckReloadEnv(t *testing.T) {
	running := []string{"PATH=/bin", "RESTGATE_DATA=/srv", "RESTGATE_HTTPS_PORT=9443", "RESTGATE_API_KEY=secret:bob"}
	for _, tc := range []struct {
		name    string
		adapted []string
		refused string // a name the refusal must give, or "" if accepted
	}{
		{"json config, no record", nil, ""},
		{"same variables", []string{"RESTGATE_API_KEY", "RESTGATE_DATA", "RESTGATE_HTTPS_PORT"}, ""},
		{"more variables", []string{"RESTGATE_ADMIN", "RESTGATE_API_KEY", "RESTGATE_DATA", "RESTGATE_HTTPS_PORT"}, ""},
		{"bare shell", []string{}, "RESTGATE_DATA, RESTGATE_HTTPS_PORT"},
		{"one missing", []string{"RESTGATE_API_KEY", "RESTGATE_DATA"}, "this shell has no RESTGATE_HTTPS_PORT,"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkReloadEnv(tc.adapted, running)
			switch {
			case tc.refused == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.refused != "" && (err == nil || !strings.Contains(err.Error(), tc.refused)):
				t.Fatalf("err = %v, want a refusal naming %s", err, tc.refused)
			case err != nil && strings.Contains(err.Error(), "secret"):
				t.Fatalf("a value reached the message: %v", err)
			}
		})
	}
}

func TestEnvNames(t *testing.T) {
	got := envNames([]string{"RESTGATE_B=1", "HOME=/root", "RESTGATE_A=x=y", "RESTGATEX=1"})
	if strings.Join(got, ",") != "RESTGATE_A,RESTGATE_B" {
		t.Fatalf("envNames = %v", got)
	}
}
