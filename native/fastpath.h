/* dpdkeni native fast path: the C side of dpdkeni.fastpath.
 *
 * Functions return 0 or a count on success and -errno on failure; Python decides policy.
 * The block between the CDEF markers is read by native/build_ffi.py as the cffi cdef.
 */
#ifndef DPDKENI_FASTPATH_H
#define DPDKENI_FASTPATH_H

#include <stddef.h>
#include <stdint.h>

#define DK_MAX_PORTS 2
#define DK_MAX_QUEUES 8
#define DK_RING_SIZE 2048
#define DK_MAX_BURST 1024

enum dk_mode { DK_MODE_IO = 0, DK_MODE_MAC = 1, DK_MODE_MACSWAP = 2, DK_MODE_TXONLY = 3, DK_MODE_RXONLY = 4 };
enum dk_backend { DK_BACKEND_AF_PACKET = 0, DK_BACKEND_AF_XDP = 1 };
enum dk_tx_method { DK_TX_SENDMMSG = 0, DK_TX_RING = 1 };

/* CDEF-BEGIN */
/* Internet checksum (RFC 1071) of len bytes, returned in network byte order as stored in a header. */
uint16_t dk_inet_csum(const uint8_t *buf, size_t len);
/* Swap destination and source MAC of each of n frames (frames[i] points at an Ethernet header,
 * lens[i] its length); frames shorter than 12 bytes are left alone. Returns the number swapped. */
int dk_macswap_burst(uint8_t **frames, const uint32_t *lens, int n);

/* (the DK_* constants above are added to the cdef by build_ffi.py) */

/* What to forward: ports by name (in the netns of netns_fd when >= 0, else the caller's). */
struct dk_config {
    char ifnames[2][16];
    int nports;
    int mode;          /* DK_MODE_* */
    int backend;       /* DK_BACKEND_* */
    int tx_method;     /* DK_TX_* (AF_PACKET only) */
    int burst;         /* 1..DK_MAX_BURST */
    int queues;        /* 1..DK_MAX_QUEUES: PACKET_FANOUT group / AF_XDP queue ids 0..queues-1 */
    int cpu;           /* pin queue q to cpu + q; -1: no pinning */
    int pkt_size;      /* txonly frame length without FCS, 60..1514 */
    int flows;         /* txonly: UDP source ports 1024 .. 1024 + flows - 1 */
    uint8_t peer[6];   /* destination MAC for mac and txonly modes */
    uint64_t rate;     /* txonly: packets/s per port, 0 = as fast as possible */
    uint64_t count;    /* txonly: stop after this many sent per port, 0 = no limit */
    int netns_fd;      /* -1: current netns */
    int zerocopy;      /* AF_XDP: 1 try zero-copy first, 0 copy mode only */
    int spin_us;       /* an idle queue busy-polls this long before sleeping in poll(); 0: sleep at once */
};

/* testpmd's per-port counters; pps/bps are over the last whole second of the run. */
struct dk_port_stats {
    uint64_t rx_packets, rx_bytes, rx_dropped, rx_errors;
    uint64_t tx_packets, tx_bytes, tx_dropped, tx_errors;
    uint64_t rx_pps, tx_pps, rx_bps, tx_bps;
};

struct dk_fwd;

/* Open sockets/rings for cfg; on failure returns -errno and writes the failing step into err. */
int dk_fwd_open(const struct dk_config *cfg, struct dk_fwd **out, char *err, size_t errlen);
/* Forward until dk_fwd_stop(), the deadline (seconds <= 0: none) or txonly's count; -errno on a fatal error. */
int dk_fwd_run(struct dk_fwd *f, double seconds);
/* Ask a running dk_fwd_run to return (async-signal-safe, any thread). */
void dk_fwd_stop(struct dk_fwd *f);
/* Snapshot of the counters of every port (out has nports entries); safe while running. */
int dk_fwd_stats(struct dk_fwd *f, struct dk_port_stats *out);
/* A line saying how port p is driven (backend, XDP mode, TX method). */
int dk_fwd_describe(struct dk_fwd *f, int port, char *buf, size_t len);
/* The MAC address of port p (6 bytes). */
int dk_fwd_mac(struct dk_fwd *f, int port, uint8_t *mac);
void dk_fwd_close(struct dk_fwd *f);
/* Feature flag: 1 when built with libxdp (AF_XDP available), else 0. */
int dk_have_af_xdp(void);
/* CDEF-END */

#endif
