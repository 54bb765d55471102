//go:build !linux

package redistest

import "syscall"

// sysProcAttr returns nil on platforms without a parent-death signal; there
// the test cleanups are the only thing that stops the servers.
func sysProcAttr() *syscall.SysProcAttr { return nil }
