package redistest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// StartTLS starts one redis-server like Start, except that it accepts only
// TLS connections (on Port; there is no plain-text port) and does not ask
// clients for certificates. Its certificate, for the IP address 127.0.0.1,
// is signed by a certificate authority made for this server alone; TLSConfig
// returns a client configuration that trusts it, Client uses it, and URL
// returns the rediss:// address.
//
// It skips the test like Require when redis-server is missing, and also
// when redis-server was built without TLS support, unless
// THROTTLE_REQUIRE_REDIS is set to 1, which turns both skips into failures.
func StartTLS(tb testing.TB, extraArgs ...string) *Server {
	tb.Helper()
	Require(tb)
	s := &Server{extra: append([]string(nil), extraArgs...), dir: tb.TempDir()}
	ca, err := writeCertificates(s.dir)
	if err != nil {
		tb.Fatalf("redistest: make TLS certificates: %v", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	s.tls = &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
	s.tlsArgs = []string{
		"--tls-cert-file", filepath.Join(s.dir, "server.crt"),
		"--tls-key-file", filepath.Join(s.dir, "server.key"),
		"--tls-ca-cert-file", filepath.Join(s.dir, "ca.crt"),
		"--tls-auth-clients", "no",
	}
	if err := s.startFresh(tb); err != nil {
		if noTLSSupport(err.Error()) {
			if os.Getenv(requireEnv) == "1" {
				tb.Fatalf("redistest: redis-server has no TLS support, but %s=1 requires the TLS test to run: %v", requireEnv, err)
			}
			tb.Skipf("redistest: skipping because redis-server was built without TLS support: %v", err)
		}
		tb.Fatalf("redistest: could not start redis-server with TLS: %v", err)
	}
	return s
}

// noTLSSupport reports whether a failed start's message (with its log tail)
// says that redis-server was built without TLS.
func noTLSSupport(msg string) bool {
	m := strings.ToLower(msg)
	return strings.Contains(m, "bad directive") ||
		strings.Contains(m, "connection type tls") ||
		strings.Contains(m, "tls") && strings.Contains(m, "not supported")
}

// TLSConfig returns a copy of the client TLS configuration for a server
// started by StartTLS (its RootCAs trust the server's certificate authority),
// or nil for a plain-text server.
func (s *Server) TLSConfig() *tls.Config {
	if s.tls == nil {
		return nil
	}
	return s.tls.Clone()
}

// URL returns the server's address as a go-redis URL: rediss:// for a
// server started by StartTLS, redis:// otherwise.
func (s *Server) URL() string {
	scheme := "redis"
	if s.tls != nil {
		scheme = "rediss"
	}
	return fmt.Sprintf("%s://%s", scheme, s.Addr)
}

// writeCertificates writes ca.crt, server.crt and server.key (ECDSA P-256,
// valid for a day, for the IP 127.0.0.1) to dir and returns the CA.
func writeCertificates(dir string) (*x509.Certificate, error) {
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "redistest CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	files := []struct {
		name, typ string
		der       []byte
	}{
		{"ca.crt", "CERTIFICATE", caDER},
		{"server.crt", "CERTIFICATE", der},
		{"server.key", "EC PRIVATE KEY", keyDER},
	}
	for _, f := range files {
		b := pem.EncodeToMemory(&pem.Block{Type: f.typ, Bytes: f.der})
		if err := os.WriteFile(filepath.Join(dir, f.name), b, 0o600); err != nil {
			return nil, errors.Join(fmt.Errorf("write %s", f.name), err)
		}
	}
	return ca, nil
}
