/* Ending a process the way one it waited for ended: the same exit status, or death by the
 * same signal (what a parent reading our status then sees), shared by the C programs
 * a3s-box builds (a3s_box/cbuild.py puts this folder on their include path): the guest
 * init's container and nsexec front ends and the host loop's PID 1 parent. */
#ifndef A3S_EXIT_AS_H
#define A3S_EXIT_AS_H

#include <signal.h>

/* Raises SIG with its default action, unblocked; returns only for a signal that does not
 * end a process by default, with the status a shell would give: 128 + SIG. */
static inline int die_by_signal(int sig)
{
	signal(sig, SIG_DFL);
	sigset_t one;
	sigemptyset(&one);
	sigaddset(&one, sig);
	sigprocmask(SIG_UNBLOCK, &one, NULL);
	raise(sig);
	return 128 + sig;
}

#endif
