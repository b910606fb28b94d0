/* The forwarding loop: testpmd's modes over a backend (AF_PACKET or AF_XDP), one thread per queue. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include "fwd_int.h"

void dk_errf(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (!err || !errlen)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

int dk_netns_enter(const struct dk_fwd *f, int *saved)
{
    *saved = -1;
    if (f->cfg.netns_fd < 0)
        return 0;
    *saved = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (*saved < 0)
        return -errno;
    if (setns(f->cfg.netns_fd, CLONE_NEWNET) < 0) {
        int e = errno;
        close(*saved);
        *saved = -1;
        return -e;
    }
    return 0;
}

void dk_netns_leave(int saved)
{
    if (saved < 0)
        return;
    /* Going back cannot fail for a namespace we came from; if it did, this thread stays put. */
    if (setns(saved, CLONE_NEWNET) < 0)
        perror("dpdkeni: setns back");
    close(saved);
}

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Ethernet / IPv4 198.18.0.1 -> 198.18.0.2 / UDP sport -> dport headers of a len-byte frame (42 bytes written;
 * no UDP checksum). */
void dk_udp_headers(uint8_t *p, int len, const uint8_t *dst, const uint8_t *src, uint16_t sport, uint16_t dport)
{
    uint16_t csum;

    memcpy(p, dst, 6);
    memcpy(p + 6, src, 6);
    put16(p + 12, 0x0800);
    memset(p + 14, 0, 28);
    p[14] = 0x45;
    put16(p + 16, (uint16_t)(len - 14));
    p[22] = 64;
    p[23] = 17;
    memcpy(p + 26, (const uint8_t[]){198, 18, 0, 1}, 4);
    memcpy(p + 30, (const uint8_t[]){198, 18, 0, 2}, 4);
    csum = dk_inet_csum(p + 14, 20);
    memcpy(p + 24, &csum, 2);
    put16(p + 34, sport);
    put16(p + 36, dport);
    put16(p + 38, (uint16_t)(len - 34));
}

/* testpmd's txonly packet: UDP 1024 -> 9, zero payload. */
static void build_template(struct dk_fwd *f, int port)
{
    memset(f->tmpl[port], 0, sizeof f->tmpl[port]);
    dk_udp_headers(f->tmpl[port], f->cfg.pkt_size, f->cfg.peer, f->port[port].mac, 1024, 9);
}

static int port_lookup(struct dk_port *port, const char *name, char *err, size_t errlen)
{
    struct ifreq ifr;
    int fd, rc = 0;

    snprintf(port->ifname, sizeof port->ifname, "%s", name);
    port->ifindex = (int)if_nametoindex(port->ifname);
    if (!port->ifindex) {
        rc = -errno;
        dk_errf(err, errlen, "no interface %s in this network namespace", port->ifname);
        return rc ? rc : -ENODEV;
    }
    fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", port->ifname);
    if (ioctl(fd, SIOCGIFHWADDR, &ifr) < 0) {
        rc = -errno;
        dk_errf(err, errlen, "SIOCGIFHWADDR on %s: %s", port->ifname, strerror(errno));
    } else {
        memcpy(port->mac, ifr.ifr_hwaddr.sa_data, 6);
    }
    close(fd);
    return rc;
}

static int check_config(const struct dk_config *c)
{
    if (c->nports < 1 || c->nports > DK_MAX_PORTS || c->mode < DK_MODE_IO || c->mode > DK_MODE_RXONLY)
        return -EINVAL;
    if (c->burst < 1 || c->burst > DK_MAX_BURST || c->queues < 1 || c->queues > DK_MAX_QUEUES)
        return -EINVAL;
    if (c->pkt_size < 60 || c->pkt_size > 1514 || c->flows < 1 || c->flows > 65536)
        return -EINVAL;
    if (c->backend != DK_BACKEND_AF_PACKET && c->backend != DK_BACKEND_AF_XDP)
        return -EINVAL;
    return 0;
}

static void close_queues(struct dk_fwd *f)
{
    int p, q;

    /* queue 0 last: it holds the port's XDP program */
    for (p = 0; p < f->cfg.nports; p++)
        for (q = f->cfg.queues - 1; q >= 0; q--)
            if (f->port[p].q[q].priv)
                f->ops->close(&f->port[p].q[q], f);
}

static int open_ports(struct dk_fwd *f, char *err, size_t errlen)
{
    int p, q, rc;

    for (p = 0; p < f->cfg.nports; p++) {
        rc = port_lookup(&f->port[p], f->cfg.ifnames[p], err, errlen);
        if (rc)
            return rc;
        for (q = 0; q < f->cfg.queues; q++) {
            f->port[p].q[q].port = p;
            f->port[p].q[q].queue = q;
            rc = f->ops->open(&f->port[p].q[q], f, err, errlen);
            if (rc)
                return rc;
        }
    }
    return 0;
}

int dk_fwd_open(const struct dk_config *cfg, struct dk_fwd **out, char *err, size_t errlen)
{
    struct dk_fwd *f;
    int rc, saved, p;

    *out = NULL;
    rc = check_config(cfg);
    if (rc) {
        dk_errf(err, errlen, "invalid configuration");
        return rc;
    }
    if (cfg->backend == DK_BACKEND_AF_XDP && !dk_have_af_xdp()) {
        dk_errf(err, errlen, "this build has no AF_XDP (built without libxdp)");
        return -EOPNOTSUPP;
    }
    f = calloc(1, sizeof *f);
    if (!f)
        return -ENOMEM;
    f->cfg = *cfg;
    f->ops = cfg->backend == DK_BACKEND_AF_XDP ? &dk_af_xdp_ops : &dk_af_packet_ops;
    f->fanout_id = (int)((getpid() ^ (uintptr_t)f >> 4) & 0xffff);
    rc = dk_netns_enter(f, &saved);
    if (rc) {
        dk_errf(err, errlen, "setns into the target's network namespace: %s", strerror(-rc));
        free(f);
        return rc;
    }
    rc = open_ports(f, err, errlen);
    if (rc)
        close_queues(f);
    dk_netns_leave(saved);
    if (rc) {
        free(f);
        return rc;
    }
    for (p = 0; p < f->cfg.nports; p++) {
        struct dk_port *port = &f->port[p];
        size_t used = strlen(port->detail);
        build_template(f, p);
        if (f->cfg.mode != DK_MODE_TXONLY)
            snprintf(port->detail + used, sizeof port->detail - used, ", idle: busy-poll %d us, then poll()",
                     f->cfg.spin_us);
    }
    *out = f;
    return 0;
}

void dk_fwd_close(struct dk_fwd *f)
{
    int saved;

    if (!f)
        return;
    /* libxdp detaches its XDP program by ifindex: do it in the namespace the port lives in. */
    if (dk_netns_enter(f, &saved) == 0) {
        close_queues(f);
        dk_netns_leave(saved);
    } else {
        close_queues(f);
    }
    free(f);
}

void dk_fwd_stop(struct dk_fwd *f)
{
    __atomic_store_n(&f->stop, 1, __ATOMIC_RELAXED);
}

int dk_fwd_mac(struct dk_fwd *f, int port, uint8_t *mac)
{
    if (port < 0 || port >= f->cfg.nports)
        return -EINVAL;
    memcpy(mac, f->port[port].mac, 6);
    return 0;
}

int dk_fwd_describe(struct dk_fwd *f, int port, char *buf, size_t len)
{
    if (port < 0 || port >= f->cfg.nports)
        return -EINVAL;
    snprintf(buf, len, "%s", f->port[port].detail);
    return 0;
}

static void port_totals(struct dk_fwd *f, int p, struct dk_port_stats *s)
{
    int q;

    memset(s, 0, sizeof *s);
    for (q = 0; q < f->cfg.queues; q++) {
        const struct dk_counters *c = &f->port[p].q[q].c;
        s->rx_packets += dk_get(&c->rx_packets);
        s->rx_bytes += dk_get(&c->rx_bytes);
        s->rx_errors += dk_get(&c->rx_errors);
        s->rx_dropped += dk_get(&c->kernel_rx_dropped);
        s->tx_packets += dk_get(&c->tx_packets);
        s->tx_bytes += dk_get(&c->tx_bytes);
        s->tx_dropped += dk_get(&c->tx_dropped);
        s->tx_errors += dk_get(&c->tx_errors);
    }
}

int dk_fwd_stats(struct dk_fwd *f, struct dk_port_stats *out)
{
    int p;

    for (p = 0; p < f->cfg.nports; p++) {
        struct dk_port *port = &f->port[p];
        port_totals(f, p, &out[p]);
        out[p].rx_pps = dk_get(&port->rx_pps);
        out[p].tx_pps = dk_get(&port->tx_pps);
        out[p].rx_bps = dk_get(&port->rx_bps);
        out[p].tx_bps = dk_get(&port->tx_bps);
    }
    return f->cfg.nports;
}

/* Once a second (queue 0's thread): kernel drop counters and the rates over the last second. */
static void tick(struct dk_fwd *f, double now, int rates)
{
    double dt = now - f->last_tick;
    int p, q;

    for (p = 0; p < f->cfg.nports; p++) {
        struct dk_port *port = &f->port[p];
        struct dk_port_stats s;
        for (q = 0; q < f->cfg.queues; q++)
            f->ops->drops(&port->q[q]);
        port_totals(f, p, &s);
        if (rates && dt > 0) {
            __atomic_store_n(&port->rx_pps, (uint64_t)((double)(s.rx_packets - port->last_rx) / dt), __ATOMIC_RELAXED);
            __atomic_store_n(&port->tx_pps, (uint64_t)((double)(s.tx_packets - port->last_tx) / dt), __ATOMIC_RELAXED);
            __atomic_store_n(&port->rx_bps, (uint64_t)((double)(s.rx_bytes - port->last_rxb) * 8 / dt), __ATOMIC_RELAXED);
            __atomic_store_n(&port->tx_bps, (uint64_t)((double)(s.tx_bytes - port->last_txb) * 8 / dt), __ATOMIC_RELAXED);
        }
        port->last_rx = s.rx_packets;
        port->last_tx = s.tx_packets;
        port->last_rxb = s.rx_bytes;
        port->last_txb = s.tx_bytes;
    }
    f->last_tick = now;
    f->next_tick = now + 1.0;
}

struct qthread {
    struct dk_fwd *f;
    int queue;
    double deadline;
    int rc;
    uint8_t *txbuf;               /* txonly with several flows: burst frames */
    struct dk_pkt pkts[DK_MAX_BURST];
    uint64_t sent[DK_MAX_PORTS], tried[DK_MAX_PORTS];
    uint64_t flow[DK_MAX_PORTS];
    double t0;
};

static void rewrite_macs(struct dk_fwd *f, int out, struct dk_pkt *pkts, int n)
{
    int i;
    uint8_t tmp[6];

    for (i = 0; i < n; i++) {
        if (pkts[i].len < 14)
            continue;
        if (f->cfg.mode == DK_MODE_MAC) {
            memcpy(pkts[i].data, f->cfg.peer, 6);
            memcpy(pkts[i].data + 6, f->port[out].mac, 6);
        } else {
            memcpy(tmp, pkts[i].data, 6);
            memcpy(pkts[i].data, pkts[i].data + 6, 6);
            memcpy(pkts[i].data + 6, tmp, 6);
        }
    }
}

static void send_counted(struct dk_fwd *f, struct dk_q *q, struct dk_pkt *pkts, int n)
{
    int sent = f->ops->tx(q, pkts, n), i;
    uint64_t bytes = 0;

    if (sent < 0)
        sent = 0;
    for (i = 0; i < sent; i++)
        bytes += pkts[i].len;
    dk_add(&q->c.tx_packets, (uint64_t)sent);
    dk_add(&q->c.tx_bytes, bytes);
    if (sent < n)
        dk_add(&q->c.tx_dropped, (uint64_t)(n - sent));
}

/* Receive a burst on every port and handle it by mode; returns frames seen or -errno. */
static int forward_once(struct qthread *t)
{
    struct dk_fwd *f = t->f;
    int p, n, total = 0;

    for (p = 0; p < f->cfg.nports; p++) {
        struct dk_q *in = &f->port[p].q[t->queue];
        int out = f->cfg.nports == 2 ? 1 - p : p, i;
        uint64_t bytes = 0;

        n = f->ops->rx(in, t->pkts, f->cfg.burst);
        if (n < 0)
            return n;
        if (n == 0)
            continue;
        for (i = 0; i < n; i++)
            bytes += t->pkts[i].len;
        dk_add(&in->c.rx_packets, (uint64_t)n);
        dk_add(&in->c.rx_bytes, bytes);
        if (f->cfg.mode == DK_MODE_MAC || f->cfg.mode == DK_MODE_MACSWAP)
            rewrite_macs(f, out, t->pkts, n);
        if (f->cfg.mode != DK_MODE_RXONLY)
            send_counted(f, &f->port[out].q[t->queue], t->pkts, n);
        f->ops->rx_done(in);
        total += n;
    }
    return total;
}

/* This queue's share of a per-port figure (rate or count). */
static uint64_t share(uint64_t total, int queues, int q)
{
    return total / (uint64_t)queues + ((uint64_t)q < total % (uint64_t)queues ? 1 : 0);
}

/* txonly: a burst per port, paced by cfg.rate; returns frames sent, 0 when paced, -1 when count is done. */
static int txonly_once(struct qthread *t, double now)
{
    struct dk_fwd *f = t->f;
    uint64_t rate = share(f->cfg.rate, f->cfg.queues, t->queue);
    uint64_t count = share(f->cfg.count, f->cfg.queues, t->queue);
    int p, i, done = 0, total = 0;

    for (p = 0; p < f->cfg.nports; p++) {
        struct dk_q *q = &f->port[p].q[t->queue];
        uint64_t before = dk_get(&q->c.tx_packets), allowed = (uint64_t)f->cfg.burst;
        int n;

        if (f->cfg.count && t->sent[p] >= count) {
            done++;
            continue;
        }
        if (rate) {
            double due = (now - t->t0) * (double)rate;
            allowed = due > (double)t->tried[p] ? (uint64_t)(due - (double)t->tried[p]) : 0;
        }
        if (f->cfg.count && allowed > count - t->sent[p])
            allowed = count - t->sent[p];
        n = allowed < (uint64_t)f->cfg.burst ? (int)allowed : f->cfg.burst;
        for (i = 0; i < n; i++) {
            uint8_t *frame = f->tmpl[p];
            if (f->cfg.flows > 1) {
                frame = t->txbuf + (size_t)i * (size_t)f->cfg.pkt_size;
                memcpy(frame, f->tmpl[p], (size_t)f->cfg.pkt_size);
                put16(frame + 34, (uint16_t)(1024 + t->flow[p]++ % (uint64_t)f->cfg.flows));
            }
            t->pkts[i].data = frame;
            t->pkts[i].len = (uint32_t)f->cfg.pkt_size;
        }
        if (n > 0)
            send_counted(f, q, t->pkts, n);
        /* with a count, drops are retried: the count is of frames the kernel took */
        t->sent[p] += dk_get(&q->c.tx_packets) - before;
        t->tried[p] += (uint64_t)n;
        total += n;
    }
    return done == f->cfg.nports ? -1 : total;
}

static void idle_wait(struct qthread *t, int ms)
{
    struct pollfd fds[DK_MAX_PORTS];
    int p, n = 0;

    if (t->f->cfg.mode == DK_MODE_TXONLY) {
        struct timespec ts = {0, 50000};
        nanosleep(&ts, NULL);
        return;
    }
    for (p = 0; p < t->f->cfg.nports; p++) {
        fds[n].fd = t->f->ops->pollfd(&t->f->port[p].q[t->queue]);
        fds[n].events = POLLIN;
        fds[n].revents = 0;
        n++;
    }
    poll(fds, (nfds_t)n, ms);
}

static void pin(const struct dk_fwd *f, int q)
{
    cpu_set_t set;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);

    if (f->cfg.cpu < 0 || ncpu <= 0)
        return;
    CPU_ZERO(&set);
    CPU_SET((size_t)((f->cfg.cpu + q) % ncpu), &set);
    pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

/* Nothing came: keep polling the rings for cfg.spin_us after the last frame, then sleep in poll(). A sleeping
 * reader costs the sender a wakeup (an IPI) per batch it delivers, paid in the sender's softirq; a spinning one
 * costs nothing there. txonly has nothing to poll: it was paced, it naps. */
static void idle(struct qthread *t, double now, double *idle_since)
{
    double spin = (double)t->f->cfg.spin_us * 1e-6;

    if (t->f->cfg.mode != DK_MODE_TXONLY && spin > 0) {
        if (*idle_since == 0)
            *idle_since = now;
        if (now - *idle_since < spin) {
            cpu_relax();
            return;
        }
    }
    idle_wait(t, 5);
}

static void *qloop(void *arg)
{
    struct qthread *t = arg;
    struct dk_fwd *f = t->f;
    double idle_since = 0;

    pin(f, t->queue);
    t->t0 = now_s();
    while (!__atomic_load_n(&f->stop, __ATOMIC_RELAXED)) {
        double now = now_s();
        int n;

        if (t->deadline > 0 && now >= t->deadline)
            break;
        if (t->queue == 0 && now >= f->next_tick)
            tick(f, now, 1);
        if (f->cfg.mode == DK_MODE_TXONLY) {
            n = txonly_once(t, now);
            if (n < 0)
                break;
        } else {
            n = forward_once(t);
            if (n < 0) {
                t->rc = n;
                dk_fwd_stop(f);
                break;
            }
        }
        if (n == 0)
            idle(t, now, &idle_since);
        else
            idle_since = 0;
    }
    return NULL;
}

int dk_fwd_run(struct dk_fwd *f, double seconds)
{
    struct qthread *ts;
    pthread_t tids[DK_MAX_QUEUES];
    int q, rc = 0, started = 1;
    double t0 = now_s();

    ts = calloc((size_t)f->cfg.queues, sizeof *ts);
    if (!ts)
        return -ENOMEM;
    f->last_tick = t0;
    f->next_tick = t0 + 1.0;
    for (q = 0; q < f->cfg.queues; q++) {
        ts[q].f = f;
        ts[q].queue = q;
        ts[q].deadline = seconds > 0 ? t0 + seconds : 0;
        if (f->cfg.flows > 1) {
            ts[q].txbuf = malloc((size_t)f->cfg.burst * (size_t)f->cfg.pkt_size);
            if (!ts[q].txbuf)
                rc = -ENOMEM;
        }
    }
    for (q = 1; q < f->cfg.queues && !rc; q++) {
        int e = pthread_create(&tids[q], NULL, qloop, &ts[q]);
        if (e) {
            rc = -e;
            break;
        }
        started++;
    }
    if (!rc)
        qloop(&ts[0]);
    else
        dk_fwd_stop(f);
    for (q = 1; q < started; q++)
        pthread_join(tids[q], NULL);
    /* a thread that hit a fatal error stops the others */
    for (q = 0; q < f->cfg.queues; q++) {
        if (ts[q].rc && !rc)
            rc = ts[q].rc;
        free(ts[q].txbuf);
    }
    tick(f, now_s(), 0);
    free(ts);
    return rc;
}
