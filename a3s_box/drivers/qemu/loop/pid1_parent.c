/* `a3s-shim-loop --pid1-parent PID`: the parent of a VMM that is init of a PID namespace
 * made inside a user namespace (a box without root: a3s_box/jail/enter.py). The shim
 * cannot make such a namespace for its own child, so the child makes it and forks; this
 * is what the child execs, a few pages standing where the VMM would: stop signals sent to
 * it go to the VMM, and it ends as the VMM ended (the same status, or the same signal),
 * so the shim's loop watches it as it would the VMM. It dies with the shim
 * (PR_SET_PDEATHSIG, set before exec), and the VMM with it. */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "exit_as.h"

int pid1_parent(pid_t vmm)
{
	static const int forwarded[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
	/* nothing of what the shim's child held (it forked before closing them) */
	if (syscall(SYS_close_range, 3, ~0U, 0) != 0)
		for (int fd = 3; fd < 4096; fd++)
			close(fd);
	sigset_t mask;
	sigemptyset(&mask);
	for (size_t i = 0; i < sizeof forwarded / sizeof *forwarded; i++)
		sigaddset(&mask, forwarded[i]);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK); /* read until empty, below */
	int pfd = (int)syscall(SYS_pidfd_open, vmm, 0);
	for (;;) {
		int status;
		pid_t got = waitpid(vmm, &status, WNOHANG);
		if (got == vmm) {
			if (WIFEXITED(status))
				_exit(WEXITSTATUS(status));
			_exit(die_by_signal(WTERMSIG(status)));
		}
		if (got < 0 && errno != EINTR)
			_exit(127);
		struct pollfd p[2] = {{.fd = sfd, .events = POLLIN}, {.fd = pfd, .events = POLLIN}};
		if (poll(p, 2, pfd < 0 ? 200 : -1) > 0 && (p[0].revents & POLLIN)) {
			struct signalfd_siginfo si;
			while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si)
				kill(vmm, (int)si.ssi_signo);
		}
	}
}
