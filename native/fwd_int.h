/* Internal to the forwarder: the backend interface and the state shared by fwd.c and the backends. */
#ifndef DPDKENI_FWD_INT_H
#define DPDKENI_FWD_INT_H

#include <stdarg.h>
#include "fastpath.h"

struct dk_pkt {
    uint8_t *data;
    uint32_t len;
    uint64_t rx_ns;               /* receive: the kernel's software timestamp (CLOCK_REALTIME ns), 0 if none */
};

/* Written only by the thread that owns the queue; read by others with relaxed atomics. */
struct dk_counters {
    uint64_t rx_packets, rx_bytes, rx_errors;
    uint64_t tx_packets, tx_bytes, tx_dropped, tx_errors;
    uint64_t kernel_rx_dropped;   /* refreshed by the backend's drops() */
};

struct dk_q {
    void *priv;                   /* the backend's socket state */
    struct dk_counters c;
    int port, queue;
};

struct dk_backend_ops {
    const char *name;
    int (*open)(struct dk_q *q, struct dk_fwd *f, char *err, size_t errlen);
    /* Up to n received frames, valid until rx_done; -errno on a fatal error. */
    int (*rx)(struct dk_q *q, struct dk_pkt *pkts, int n);
    void (*rx_done)(struct dk_q *q);
    /* Send n frames (copied or queued); returns how many the kernel took. */
    int (*tx)(struct dk_q *q, const struct dk_pkt *pkts, int n);
    /* Fold the kernel's receive drop counter into q->c.kernel_rx_dropped. */
    void (*drops)(struct dk_q *q);
    int (*pollfd)(struct dk_q *q);
    void (*close)(struct dk_q *q, struct dk_fwd *f);
};

struct dk_port {
    char ifname[16];
    int ifindex;
    uint8_t mac[6];
    char detail[160];
    struct dk_q q[DK_MAX_QUEUES];
    /* AF_XDP: our XDP program and its XSKMAP, attached with xdp_flags (valid when xdp_attached) */
    int xdp_attached, xdp_prog_fd, xdp_map_fd;
    uint32_t xdp_flags;
    /* the last second's rates, written by queue 0's thread */
    uint64_t last_rx, last_tx, last_rxb, last_txb;
    uint64_t rx_pps, tx_pps, rx_bps, tx_bps;
};

struct dk_fwd {
    struct dk_config cfg;
    const struct dk_backend_ops *ops;
    struct dk_port port[DK_MAX_PORTS];
    int stop;
    int fanout_id;
    uint8_t tmpl[DK_MAX_PORTS][1514];   /* txonly frame of each port (its own source MAC) */
    double next_tick, last_tick;
};

extern const struct dk_backend_ops dk_af_packet_ops;
extern const struct dk_backend_ops dk_af_xdp_ops;

void dk_errf(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Enter the configured netns on this thread (saving the current one in *saved); -errno on failure. */
int dk_netns_enter(const struct dk_fwd *f, int *saved);
void dk_netns_leave(int saved);
void dk_udp_headers(uint8_t *p, int len, const uint8_t *dst, const uint8_t *src, uint16_t sport, uint16_t dport);

static inline void dk_add(uint64_t *counter, uint64_t n)
{
    __atomic_store_n(counter, __atomic_load_n(counter, __ATOMIC_RELAXED) + n, __ATOMIC_RELAXED);
}

static inline void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ volatile("yield" ::: "memory")
#else
#define cpu_relax() __asm__ volatile("" ::: "memory")
#endif

static inline uint64_t dk_get(const uint64_t *counter)
{
    return __atomic_load_n(counter, __ATOMIC_RELAXED);
}

#endif
