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

/* pmdtest: histogram and stream sizes (the cdef below repeats them as numbers; pmdtest.c asserts they agree) */
#define DK_HIST_SUB_BITS 7                 /* 128 sub-buckets per power of two: <= 1/128 relative bucket width */
#define DK_HIST_BUCKETS 3584               /* values 0 .. 2^34-1 ns (17 s) */
#define DK_PT_MAX_STREAMS 8
#define DK_PT_MAX_PATTERN 64
#define DK_PT_UDP_PORT 17488               /* UDP destination port of test frames */
#define DK_PT_HDR_LEN 42                   /* Ethernet + IPv4 + UDP */
#define DK_PT_PAYLOAD_LEN 18               /* epoch u8, stream u8, seq u64, send time u64 (host order) */
#define DK_SEQ_WINDOW 65536                /* duplicates are told from late frames within this many sequence numbers */

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

/* ---- pmdtest: test stream, receiver accounting, latency histogram (native/pmdtest.c) ---- */

/* Log-linear latency histogram (HDR style), values in ns: exact below 256 ns, then 128 buckets per power of two
 * (relative width <= 1/128); fixed size; two histograms merge by adding buckets. */
struct dk_hist {
    uint64_t count, min, max, sum, overflow;
    uint64_t buckets[3584];
};
void dk_hist_reset(struct dk_hist *h);
void dk_hist_record(struct dk_hist *h, uint64_t ns);
void dk_hist_merge(struct dk_hist *dst, const struct dk_hist *src);
/* The bucket of ns, and that bucket's lowest and highest value. */
int dk_hist_bucket(uint64_t ns);
uint64_t dk_hist_lowest(int bucket);
uint64_t dk_hist_highest(int bucket);
/* The value at percentile p (0..100, nearest rank): the middle of the bucket holding that rank (max at 100);
 * 0 when empty. */
uint64_t dk_hist_percentile(const struct dk_hist *h, double p);

/* Per stream sequence accounting. A frame with a sequence number below the highest seen so far is reordered
 * (late); within the last 65536 numbers a second copy is a duplicate; older than that it is only counted late. */
struct dk_seq {
    uint64_t next;                   /* highest sequence number seen + 1 */
    uint64_t rx, dup, reorder, late_old;
    uint64_t bits[1024];             /* seen-bitmap of the window, indexed by seq % 65536 */
};
void dk_seq_reset(struct dk_seq *s);
/* Account one frame: 0 in order (possibly after a gap), 1 reordered, 2 duplicate, 3 reordered beyond the window. */
int dk_seq_account(struct dk_seq *s, uint64_t seq);

/* Build a test frame of len bytes (without FCS, 60..1514) into buf: Ethernet dst/src, IPv4 198.18.0.1 ->
 * 198.18.0.2, UDP 1024 + stream -> DK_PT_UDP_PORT, payload epoch, stream, seq, send time. */
int dk_pt_build(uint8_t *buf, int len, const uint8_t *dst, const uint8_t *src, int epoch, int stream,
                uint64_t seq, uint64_t send_ns);
/* Parse a frame: 1 and the payload fields when it is a test frame, else 0. */
int dk_pt_parse(const uint8_t *buf, uint32_t len, int *epoch, int *stream, uint64_t *seq, uint64_t *send_ns);

/* One trial: offer the stream on port 0 for `seconds`, receive on every port until `drain` seconds after. */
struct dk_pt_spec {
    uint64_t rate;                   /* frames/s; 0: as fast as the kernel takes them */
    uint64_t max_frames;             /* stop sending after this many (0: no limit) */
    double seconds, drain;
    uint8_t peer[6];                 /* destination MAC */
    int nstreams;                    /* 1..8: frame i belongs to stream i % nstreams */
    int npattern;                    /* 1..64 */
    uint16_t pattern[64];            /* frame lengths without FCS, cycled */
    int epoch;                       /* 0..255: frames of another epoch (an earlier trial) count as stale */
};
struct dk_pt_stream {
    uint64_t tx, rx, dup, reorder, late_old;
};
struct dk_pt_result {
    uint64_t tried, tx_packets, tx_bytes, tx_dropped;
    uint64_t rx_packets, rx_bytes, rx_other, rx_stale, rx_kernel_dropped;
    uint64_t dup, reorder, lost;
    uint64_t kernel_ts, poll_ts;     /* latency samples timed by the kernel's receive timestamp / by our poll */
    double tx_seconds, elapsed;      /* first to last send; the whole trial */
    double offered_pps;              /* tx_packets / seconds */
    int rate_ok;                     /* tx_packets within 1 % of rate * seconds (always 1 when rate is 0) */
    int interrupted;                 /* dk_fwd_stop() ended it early */
    struct dk_pt_stream streams[8];
    struct dk_hist latency;
};
/* Run a trial on f (opened with the AF_PACKET backend and one queue) in the calling thread; -errno on error. */
int dk_pt_trial(struct dk_fwd *f, const struct dk_pt_spec *spec, struct dk_pt_result *out);
/* CDEF-END */

#endif
