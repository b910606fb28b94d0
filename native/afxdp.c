/* AF_XDP backend through libxdp: one UMEM per socket (half of its frames for the fill/rx side, half for tx),
 * libxdp's default XDP program redirecting the queue to the socket. Native XDP first, then generic (skb)
 * XDP; zero-copy first when asked, then copy mode. Built only when libxdp's headers are there. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include "fwd_int.h"

#ifdef DK_HAVE_XDP
#include <stddef.h>
#include <bpf/bpf.h>
#include <linux/bpf.h>
#include <linux/if_link.h>
#include <xdp/libxdp.h>
#include <xdp/xsk.h>

#define FRAME_SIZE 2048u
#define NUM_FRAMES (2u * DK_RING_SIZE)

struct xq {
    struct xsk_umem *umem;
    struct xsk_socket *xsk;
    struct xsk_ring_prod fill, tx;
    struct xsk_ring_cons comp, rx;
    uint8_t *area;
    uint64_t free_tx[DK_RING_SIZE];   /* tx frames not in flight */
    unsigned nfree;
    unsigned rx_taken;                /* descriptors handed out by the last rx */
    int fd;
};

static char last_msg[256];

static int quiet_print(enum libxdp_print_level level, const char *fmt, va_list ap)
{
    /* keep libxdp's last warning for our error message; do not print it */
    if (level == LIBXDP_WARN)
        vsnprintf(last_msg, sizeof last_msg, fmt, ap);
    return 0;
}

static int quiet_bpf(enum libbpf_print_level level, const char *fmt, va_list ap)
{
    (void)level;
    (void)fmt;
    (void)ap;
    return 0;
}

static void xq_free(struct xq *x)
{
    if (x->xsk)
        xsk_socket__delete(x->xsk);
    if (x->umem)
        xsk_umem__delete(x->umem);
    if (x->area)
        munmap(x->area, (size_t)NUM_FRAMES * FRAME_SIZE);
    x->xsk = NULL;
    x->umem = NULL;
    x->area = NULL;
}

static int fill_all(struct xq *x)
{
    uint32_t idx, i;

    if (xsk_ring_prod__reserve(&x->fill, DK_RING_SIZE, &idx) != DK_RING_SIZE)
        return -ENOMEM;
    for (i = 0; i < DK_RING_SIZE; i++)
        *xsk_ring_prod__fill_addr(&x->fill, idx + i) = (uint64_t)i * FRAME_SIZE;
    xsk_ring_prod__submit(&x->fill, DK_RING_SIZE);
    for (i = 0; i < DK_RING_SIZE; i++)
        x->free_tx[i] = (uint64_t)(DK_RING_SIZE + i) * FRAME_SIZE;
    x->nfree = DK_RING_SIZE;
    return 0;
}

/* The XDP program, as raw instructions (no BPF compiler needed):
 *     return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
 * frames of a queue without a socket go on to the kernel stack. */
static int load_prog(int map_fd)
{
    struct bpf_insn insns[] = {
        { .code = BPF_LDX | BPF_W | BPF_MEM, .dst_reg = BPF_REG_2, .src_reg = BPF_REG_1,
          .off = offsetof(struct xdp_md, rx_queue_index) },
        { .code = BPF_LD | BPF_DW | BPF_IMM, .dst_reg = BPF_REG_1, .src_reg = BPF_PSEUDO_MAP_FD, .imm = map_fd },
        { .code = 0 },
        { .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_3, .imm = XDP_PASS },
        { .code = BPF_JMP | BPF_CALL, .imm = BPF_FUNC_redirect_map },
        { .code = BPF_JMP | BPF_EXIT },
    };

    return bpf_prog_load(BPF_PROG_TYPE_XDP, "dpdkeni_xsk", "Dual BSD/GPL", insns,
                         sizeof insns / sizeof insns[0], NULL);
}

static void port_detach(struct dk_port *port)
{
    LIBBPF_OPTS(bpf_xdp_attach_opts, opts, .old_prog_fd = port->xdp_prog_fd);

    if (!port->xdp_attached)
        return;
    /* remove only our own program (XDP_FLAGS_REPLACE with the old fd) */
    bpf_xdp_detach(port->ifindex, port->xdp_flags | XDP_FLAGS_REPLACE, &opts);
    close(port->xdp_prog_fd);
    close(port->xdp_map_fd);
    port->xdp_attached = 0;
}

/* Queue 0 of a port: make the XSKMAP, load the program, attach it (native XDP, else generic). */
static int port_attach(struct dk_port *port, int nqueues, const char **mode, char *err, size_t errlen)
{
    static const struct { uint32_t flag; const char *name; } modes[] = {
        { XDP_FLAGS_DRV_MODE, "native XDP" }, { XDP_FLAGS_SKB_MODE, "generic XDP" },
    };
    int m, rc = -EOPNOTSUPP;

    port->xdp_map_fd = bpf_map_create(BPF_MAP_TYPE_XSKMAP, "dpdkeni_xsks", 4, 4, (uint32_t)nqueues, NULL);
    if (port->xdp_map_fd < 0) {
        rc = port->xdp_map_fd;
        dk_errf(err, errlen, "XSKMAP for %s: %s", port->ifname, strerror(-rc));
        return rc;
    }
    port->xdp_prog_fd = load_prog(port->xdp_map_fd);
    if (port->xdp_prog_fd < 0) {
        rc = port->xdp_prog_fd;
        close(port->xdp_map_fd);
        dk_errf(err, errlen, "loading the XDP program for %s: %s", port->ifname, strerror(-rc));
        return rc;
    }
    for (m = 0; m < 2; m++) {
        uint32_t flags = modes[m].flag | XDP_FLAGS_UPDATE_IF_NOEXIST;
        rc = bpf_xdp_attach(port->ifindex, port->xdp_prog_fd, flags, NULL);
        if (!rc) {
            port->xdp_flags = modes[m].flag;
            port->xdp_attached = 1;
            *mode = modes[m].name;
            return 0;
        }
        if (rc == -EBUSY || rc == -EEXIST)
            break;
    }
    close(port->xdp_prog_fd);
    close(port->xdp_map_fd);
    dk_errf(err, errlen, "attaching the XDP program to %s: %s%s", port->ifname, strerror(-rc),
            rc == -EBUSY || rc == -EEXIST ? " (another XDP program is attached)" : "");
    return rc;
}

/* One attempt with the given bind flags; on failure everything is undone. */
static int try_open(struct xq *x, const char *ifname, int queue, uint16_t bind_flags)
{
    struct xsk_umem_config ucfg = {
        .fill_size = DK_RING_SIZE, .comp_size = DK_RING_SIZE, .frame_size = FRAME_SIZE,
        .frame_headroom = 0, .flags = 0,
    };
    struct xsk_socket_config scfg;
    int rc;

    memset(&scfg, 0, sizeof scfg);
    scfg.rx_size = DK_RING_SIZE;
    scfg.tx_size = DK_RING_SIZE;
    scfg.libxdp_flags = XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD;   /* our own program, see load_prog */
    scfg.bind_flags = bind_flags;
    x->area = mmap(NULL, (size_t)NUM_FRAMES * FRAME_SIZE, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (x->area == MAP_FAILED) {
        x->area = NULL;
        return -errno;
    }
    rc = xsk_umem__create(&x->umem, x->area, (uint64_t)NUM_FRAMES * FRAME_SIZE, &x->fill, &x->comp, &ucfg);
    if (!rc)
        rc = xsk_socket__create(&x->xsk, ifname, (uint32_t)queue, x->umem, &x->rx, &x->tx, &scfg);
    if (!rc)
        rc = fill_all(x);
    if (rc) {
        xq_free(x);
        return rc < 0 ? rc : -rc;
    }
    x->fd = xsk_socket__fd(x->xsk);
    return 0;
}

/* Bind the socket: zero-copy first when asked, then copy; a queue just released may be busy a moment. */
static int bind_socket(struct xq *x, const struct dk_fwd *f, const struct dk_q *q, int *zc_out)
{
    const struct dk_port *port = &f->port[q->port];
    int zc, rc = -EOPNOTSUPP;

    for (zc = f->cfg.zerocopy ? 1 : 0; zc >= 0; zc--) {
        uint16_t bind = (uint16_t)(XDP_USE_NEED_WAKEUP | (zc ? XDP_ZEROCOPY : XDP_COPY));
        int busy_tries = 50;
        do {
            last_msg[0] = 0;
            rc = try_open(x, port->ifname, q->queue, bind);
            if (rc == -EBUSY)   /* the kernel frees a closed socket's queue from a work item */
                nanosleep(&(struct timespec){0, 10000000}, NULL);
        } while (rc == -EBUSY && --busy_tries > 0);
        if (!rc) {
            *zc_out = zc;
            return 0;
        }
        if (rc == -ENODEV || rc == -EPERM || rc == -EBUSY)
            break;
    }
    return rc;
}

static int xq_open(struct dk_q *q, struct dk_fwd *f, char *err, size_t errlen)
{
    struct dk_port *port = &f->port[q->port];
    struct xq *x = calloc(1, sizeof *x);
    const char *mode = "";
    int zc = 0, rc;
    uint32_t key = (uint32_t)q->queue;

    if (!x)
        return -ENOMEM;
    q->priv = x;
    libxdp_set_print(quiet_print);
    libbpf_set_print(quiet_bpf);
    if (q->queue == 0 && (rc = port_attach(port, f->cfg.queues, &mode, err, errlen)))
        return rc;
    rc = bind_socket(x, f, q, &zc);
    if (!rc && bpf_map_update_elem(port->xdp_map_fd, &key, &x->fd, 0) < 0)
        rc = -errno;
    if (rc) {
        size_t n = strlen(last_msg);
        while (n && last_msg[n - 1] == '\n')
            last_msg[--n] = 0;
        dk_errf(err, errlen, "AF_XDP socket on %s queue %d: %s%s%s", port->ifname, q->queue, strerror(-rc),
                last_msg[0] ? "; libxdp: " : "", last_msg);
        return rc;
    }
    if (q->queue == 0)
        snprintf(port->detail, sizeof port->detail, "af_xdp: %s, %s mode, need_wakeup, queue%s 0..%d", mode,
                 zc ? "zero-copy" : "copy", f->cfg.queues > 1 ? "s" : "", f->cfg.queues - 1);
    return 0;
}

static int xq_rx(struct dk_q *q, struct dk_pkt *pkts, int n)
{
    struct xq *x = q->priv;
    uint32_t idx, got, i;

    got = xsk_ring_cons__peek(&x->rx, (uint32_t)n, &idx);
    for (i = 0; i < got; i++) {
        const struct xdp_desc *d = xsk_ring_cons__rx_desc(&x->rx, idx + i);
        pkts[i].data = xsk_umem__get_data(x->area, d->addr);
        pkts[i].len = d->len;
        pkts[i].rx_ns = 0;
    }
    x->rx_taken = got;
    return (int)got;
}

static void xq_rx_done(struct dk_q *q)
{
    struct xq *x = q->priv;
    uint32_t idx, fidx, i, n = x->rx_taken;

    if (!n)
        return;
    /* the frames go back to the fill ring in the order they came (the ring has room: it held them) */
    idx = x->rx.cached_cons - n;
    if (xsk_ring_prod__reserve(&x->fill, n, &fidx) != n) {
        xsk_ring_cons__release(&x->rx, n);    /* cannot happen: the fill ring held these frames */
        x->rx_taken = 0;
        return;
    }
    for (i = 0; i < n; i++)
        *xsk_ring_prod__fill_addr(&x->fill, fidx + i) =
            xsk_umem__extract_addr(xsk_ring_cons__rx_desc(&x->rx, idx + i)->addr);
    xsk_ring_prod__submit(&x->fill, n);
    xsk_ring_cons__release(&x->rx, n);
    x->rx_taken = 0;
    if (xsk_ring_prod__needs_wakeup(&x->fill))
        recvfrom(x->fd, NULL, 0, MSG_DONTWAIT, NULL, NULL);
}

static void reclaim(struct xq *x)
{
    uint32_t idx, n, i;

    n = xsk_ring_cons__peek(&x->comp, DK_RING_SIZE, &idx);
    for (i = 0; i < n; i++)
        x->free_tx[x->nfree++] = *xsk_ring_cons__comp_addr(&x->comp, idx + i);
    if (n)
        xsk_ring_cons__release(&x->comp, n);
}

/* Make the kernel send what is on the tx ring; returns how many frames it dropped. In copy mode each sendto
 * moves at most 32 descriptors, and a frame the device dropped comes back as EBUSY (completed but not sent). */
/* Descriptors on the tx ring the kernel has not taken yet. */
static uint32_t tx_pending(const struct xq *x)
{
    return x->tx.cached_prod - __atomic_load_n(x->tx.consumer, __ATOMIC_ACQUIRE);
}

/* A sendto once the kernel has taken everything would be a wasted syscall: stop there. */
static int kick(struct dk_q *q, struct xq *x, int n)
{
    int tries = n / 32 + 2, dropped = 0;

    while (tries-- > 0 && tx_pending(x) && xsk_ring_prod__needs_wakeup(&x->tx)) {
        if (sendto(x->fd, NULL, 0, MSG_DONTWAIT, NULL, 0) >= 0)
            continue;
        if (errno == EBUSY) {
            dropped++;
            continue;
        }
        if (errno != EAGAIN && errno != ENOBUFS && errno != ENETDOWN) {
            dk_add(&q->c.tx_errors, 1);
            break;
        }
        if (errno != EAGAIN)
            break;
    }
    return dropped;
}

static int xq_tx(struct dk_q *q, const struct dk_pkt *pkts, int n)
{
    struct xq *x = q->priv;
    uint32_t idx, i, want;

    reclaim(x);
    want = (uint32_t)n < x->nfree ? (uint32_t)n : x->nfree;
    if (want)
        want = xsk_ring_prod__reserve(&x->tx, want, &idx);
    for (i = 0; i < want; i++) {
        struct xdp_desc *d = xsk_ring_prod__tx_desc(&x->tx, idx + i);
        uint64_t addr = x->free_tx[--x->nfree];
        uint32_t len = pkts[i].len < FRAME_SIZE ? pkts[i].len : FRAME_SIZE;
        memcpy(xsk_umem__get_data(x->area, addr), pkts[i].data, len);
        d->addr = addr;
        d->len = len;
    }
    if (want)
        xsk_ring_prod__submit(&x->tx, want);
    return (int)want - kick(q, x, (int)want);
}

static void xq_drops(struct dk_q *q)
{
    struct xq *x = q->priv;
    struct xdp_statistics st;
    socklen_t len = sizeof st;

    /* cumulative in the kernel: store, do not add */
    if (x && getsockopt(x->fd, SOL_XDP, XDP_STATISTICS, &st, &len) == 0)
        __atomic_store_n(&q->c.kernel_rx_dropped, st.rx_dropped + st.rx_ring_full + st.rx_invalid_descs,
                         __ATOMIC_RELAXED);
}

static int xq_pollfd(struct dk_q *q)
{
    return ((struct xq *)q->priv)->fd;
}

static void xq_close(struct dk_q *q, struct dk_fwd *f)
{
    struct xq *x = q->priv;

    xq_free(x);
    if (q->queue == 0)
        port_detach(&f->port[q->port]);
    free(x);
    q->priv = NULL;
}

int dk_have_af_xdp(void)
{
    return 1;
}

const struct dk_backend_ops dk_af_xdp_ops = {
    .name = "af_xdp",
    .open = xq_open,
    .rx = xq_rx,
    .rx_done = xq_rx_done,
    .tx = xq_tx,
    .drops = xq_drops,
    .pollfd = xq_pollfd,
    .close = xq_close,
};

#else /* !DK_HAVE_XDP */

int dk_have_af_xdp(void)
{
    return 0;
}

static int no_open(struct dk_q *q, struct dk_fwd *f, char *err, size_t errlen)
{
    (void)q;
    (void)f;
    dk_errf(err, errlen, "this build has no AF_XDP (built without libxdp)");
    return -EOPNOTSUPP;
}

const struct dk_backend_ops dk_af_xdp_ops = { .name = "af_xdp", .open = no_open };
#endif
