/* Entry: an applet by argv[0] (nsexec, tar, fs, container); PID 1 in a VM; or
 * `init --serve-stdio` on a host. */
#include "a3s.h"

#include <errno.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int usage(void)
{
	fprintf(stderr, "usage: init --serve-stdio [--root none] [--state-dir DIR] "
			"[--cgroup-root DIR] [--debug]\n       nsexec [--] COMMAND [ARG...]\n");
	return 2;
}

static int pid1(char *self)
{
	struct bootcfg bc;
	boot_early();
	boot_cmdline(&bc);
	logmsg("starting (root=%s channel=%s)", bc.root, bc.channel);
	if (!strcmp(bc.channel, "none")) {
		/* a probe boot: the driver only wants to know that a guest runs */
		logmsg("channel none: powering off");
		boot_poweroff(0);
	}
	boot_modules("/a3s/modules");
	if (boot_switch_root(&bc, self) < 0) {
		logmsg("cannot mount the root disk: powering off");
		boot_poweroff(0);
	}
	boot_late();
	if (bc.net[0] && net_up(bc.net) < 0)
		logmsg("the network is not configured: the box runs without one");
	int lfd;
	int fd = boot_open_channel(bc.channel, &lfd);
	if (fd < 0 && lfd < 0) {
		logmsg("no host channel: powering off");
		boot_poweroff(0);
	}
	struct server_opts o = {.pid1 = 1, .in_fd = fd, .out_fd = fd, .listen_fd = lfd,
				.stream_reopen = fd >= 0, .state_dir = "/.a3s",
				.cgroup_root = "/sys/fs/cgroup/a3s",
				.transport = fd >= 0 ? "virtio-serial" : "vsock"};
	server_run(&o);
	boot_poweroff(0);
}

int main(int argc, char **argv)
{
	char *name = basename(argv[0] ? argv[0] : "init");
	if (!strcmp(name, "nsexec"))
		return nsexec_main(argc, argv);
	if (!strcmp(name, "tar"))
		return tar_main(argc, argv);
	if (!strcmp(name, "fs"))
		return fs_main(argc, argv);
	if (!strcmp(name, "container"))
		return container_main(argc, argv);
	if (getpid() == 1)
		return pid1("/init");
	int serve = 0;
	const char *state = NULL, *cg = "";
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--serve-stdio"))
			serve = 1;
		else if (!strcmp(argv[i], "--root") && i + 1 < argc && !strcmp(argv[i + 1], "none"))
			i++; /* the only root a host process can have */
		else if (!strcmp(argv[i], "--state-dir") && i + 1 < argc)
			state = argv[++i];
		else if (!strcmp(argv[i], "--cgroup-root") && i + 1 < argc)
			cg = argv[++i];
		else if (!strcmp(argv[i], "--debug"))
			g_debug = 1;
		else
			return usage();
	}
	if (!serve)
		return usage();
	static char tmpl[] = "/tmp/a3s-init-XXXXXX";
	if (!state && !(state = mkdtemp(tmpl))) {
		perror("a3s-init: state dir");
		return 1;
	}
	mkdir(state, 0755);
	/* the applets in DIR, as they are in /.a3s in a VM: `nsexec` is on the agent's PATH */
	char self[4096], link[4200];
	ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
	static const char *applets[] = {"nsexec", "tar", "fs"};
	for (size_t i = 0; n > 0 && i < sizeof applets / sizeof *applets; i++) {
		self[n] = 0;
		snprintf(link, sizeof link, "%s/%s", state, applets[i]);
		unlink(link);
		if (symlink(self, link) < 0)
			fprintf(stderr, "a3s-init: %s: %s\n", link, strerror(errno));
	}
	struct server_opts o = {.in_fd = 0, .out_fd = 1, .listen_fd = -1, .state_dir = state,
				.cgroup_root = cg, .transport = "stdio"};
	return server_run(&o);
}
