/* A template's guest settles before its snapshot (PREPARE, after the agent's namespaces
 * are made): whatever it leaves pending, every clone of it runs again on its own, and
 * under TCG each first run of a kernel path is translated afresh in each clone's VMM.
 *   - its file systems synced: no clone writes back the template's dirty pages or
 *     commits its journal;
 *   - the boot's delayed kernel work done: x86 registers the TSC clocksource about a
 *     second after boot (a stop_machine and code patching), and the kernel batches a
 *     link's state change for up to a second (eth0 comes up late in boot, from init).
 * Bounded: a template waits at most QUIESCE_MAX_MS for what does not come, and then
 * is merely slower to clone, never wrong. Returns the uptime (ms) it settled at, which
 * PREPARE reports and the template's meta.json keeps. */
#include "a3s.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define QUIESCE_MAX_MS 3000
#define BOOT_WORK_MS 2000 /* the TSC clocksource is registered one second after its init */

static long long boottime_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_BOOTTIME, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int read_word(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, len - 1);
	close(fd);
	if (n < 0)
		return -1;
	buf[n] = 0;
	buf[strcspn(buf, "\n")] = 0;
	return 0;
}

/* eth0 is up but the kernel has not yet processed the link's state (operstate still
 * "unknown" or "down"); 0 when there is no eth0 or it is not up. */
static int link_pending(void)
{
	char flags[32], state[32];
	if (read_word("/sys/class/net/eth0/flags", flags, sizeof flags) < 0)
		return 0;
	if (!(strtoul(flags, NULL, 16) & 1)) /* IFF_UP */
		return 0;
	return read_word("/sys/class/net/eth0/operstate", state, sizeof state) == 0 && strcmp(state, "up") != 0;
}

long long quiesce_for_snapshot(void)
{
	sync();
	long long start = boottime_ms();
	while (boottime_ms() < BOOT_WORK_MS || link_pending()) {
		if (boottime_ms() - start >= QUIESCE_MAX_MS) {
			logmsg("snapshot: the guest did not settle within %d ms (link %s)", QUIESCE_MAX_MS,
			       link_pending() ? "pending" : "done");
			break;
		}
		usleep(20000);
	}
	sync(); /* what the delayed work wrote */
	return boottime_ms();
}
