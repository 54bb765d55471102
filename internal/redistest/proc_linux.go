//go:build linux

package redistest

import "syscall"

// sysProcAttr asks the kernel to SIGKILL the child when the thread that
// started it dies. Together with the dedicated, permanently locked spawner
// thread (see spawn) this means a redis-server never outlives a test binary
// that is killed or panics before its cleanups run (for example on -timeout).
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
