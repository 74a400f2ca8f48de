/* The guest's one network interface, configured statically from the kernel command line
 * (a3s.net=ADDR/PREFIX,GATEWAY,DNS[,MTU]; DNS "-": no resolv.conf), before any agent exists;
 * or, in a snapshot clone whose NIC is hot-plugged after the restore (a pod's), from the
 * NET message with the same text, before CONFIG. The host side (the
 * box's egress proxy) decides what that network reaches; here it is only plumbing. */
#include "a3s.h"
#include "server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <sys/ioctl.h>

static void sin_set(struct sockaddr *sa, struct in_addr a)
{
	struct sockaddr_in *s = (struct sockaddr_in *)sa;
	memset(s, 0, sizeof *s);
	s->sin_family = AF_INET;
	s->sin_addr = a;
}

static int write_text(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -1;
	size_t n = strlen(text);
	int ok = write(fd, text, n) == (ssize_t)n;
	close(fd);
	return ok ? 0 : -1;
}

int net_up(const char *spec)
{
	char buf[128], *save = NULL;
	snprintf(buf, sizeof buf, "%s", spec);
	char *cidr = strtok_r(buf, ",", &save), *gw = strtok_r(NULL, ",", &save),
	     *dns = strtok_r(NULL, ",", &save), *mtu = strtok_r(NULL, ",", &save);
	char *slash = cidr ? strchr(cidr, '/') : NULL;
	struct in_addr addr, gwa, mask;
	if (!slash || !gw || !dns)
		return logmsg("a3s.net=%s: want ADDR/PREFIX,GATEWAY,DNS[,MTU]", spec), -1;
	int mtu_value = mtu ? atoi(mtu) : 0;
	if (mtu && (mtu_value < 68 || mtu_value > 65535))
		return logmsg("a3s.net=%s: bad MTU", spec), -1;
	*slash = 0;
	int prefix = atoi(slash + 1);
	if (prefix < 1 || prefix > 32 || inet_pton(AF_INET, cidr, &addr) != 1 ||
	    inet_pton(AF_INET, gw, &gwa) != 1)
		return logmsg("a3s.net=%s: bad address", spec), -1;
	mask.s_addr = htonl(0xffffffffu << (32 - prefix));

	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (s < 0)
		return logmsg("net: socket: %s", strerror(errno)), -1;
	struct ifreq ifr = {0};
	strcpy(ifr.ifr_name, "eth0");
	/* the virtio-net probe may still be running right after the module loaded */
	for (int t = 0; ioctl(s, SIOCGIFINDEX, &ifr) < 0; t += 10) {
		if (t >= 5000) {
			logmsg("net: no eth0 (is virtio_net loaded?)");
			close(s);
			return -1;
		}
		usleep(10000);
	}
	int rc = 0;
	if (mtu_value) { /* a pod's network: the MTU of the interface the VM is plugged into */
		ifr.ifr_mtu = mtu_value;
		rc |= ioctl(s, SIOCSIFMTU, &ifr);
	}
	sin_set(&ifr.ifr_addr, addr);
	rc |= ioctl(s, SIOCSIFADDR, &ifr);
	sin_set(&ifr.ifr_netmask, mask);
	rc |= ioctl(s, SIOCSIFNETMASK, &ifr);
	/* the box's network is IPv4 alone (the proxy's, a pod's): no IPv6 on eth0, so no
	 * link-local address, duplicate detection or router solicitations, whose timers
	 * every clone of a snapshot would otherwise run on from where the template left them */
	if (write_text("/proc/sys/net/ipv6/conf/eth0/disable_ipv6", "1") < 0 && errno != ENOENT)
		logmsg("net: eth0 without IPv6: %s", strerror(errno));
	rc |= ioctl(s, SIOCGIFFLAGS, &ifr);
	ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
	rc |= ioctl(s, SIOCSIFFLAGS, &ifr);
	if ((gwa.s_addr & mask.s_addr) != (addr.s_addr & mask.s_addr)) {
		/* a gateway outside the address's subnet (Calico gives a pod a /32 and
		 * 169.254.1.1, answered by proxy ARP): reachable on the link, said first */
		struct rtentry host = {0};
		sin_set(&host.rt_dst, gwa);
		sin_set(&host.rt_genmask, (struct in_addr){.s_addr = 0xffffffffu});
		host.rt_flags = RTF_UP | RTF_HOST;
		host.rt_dev = ifr.ifr_name;
		rc |= ioctl(s, SIOCADDRT, &host);
	}
	struct rtentry rt = {0};
	sin_set(&rt.rt_dst, (struct in_addr){0});
	sin_set(&rt.rt_genmask, (struct in_addr){0});
	sin_set(&rt.rt_gateway, gwa);
	rt.rt_flags = RTF_UP | RTF_GATEWAY;
	rt.rt_dev = ifr.ifr_name;
	rc |= ioctl(s, SIOCADDRT, &rt);
	close(s);
	if (rc)
		return logmsg("net: configuring eth0: %s", strerror(errno)), -1;
	if (!strcmp(dns, "-")) /* a pod's: the CRI plugin binds its resolv.conf into each container */
		return 0;
	char conf[96];
	snprintf(conf, sizeof conf, "nameserver %s\n", dns);
	mkdir("/etc", 0755);
	if (write_text("/etc/resolv.conf", conf) < 0)
		logmsg("net: /etc/resolv.conf: %s", strerror(errno));
	return 0;
}

/* NET: a clone's eth0, hot-plugged after the restore: net_up waits for it to appear. Once,
 * before CONFIG (the agent must never see its network change), in a VM only. */
void on_net(struct conn *c, struct rd *r)
{
	static int done;
	char *spec = r_str(r);
	if (r_end(r) < 0 || strlen(spec) > 100)
		send_result(c, 0, EINVAL, "bad NET payload");
	else if (!O->pid1)
		send_result(c, 0, EPERM, "no network to configure outside a VM");
	else if (A.configured || done)
		send_result(c, 0, EBUSY, "the network is configured once, before CONFIG");
	else if (net_up(spec) < 0)
		send_result(c, 0, EIO, "configuring eth0 failed (see the console)");
	else {
		done = 1;
		logmsg("network: %s", spec);
		send_result(c, 0, 0, "");
	}
	free(spec);
}
