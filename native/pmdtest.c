/* pmdtest: the test stream (stream id, sequence number and send time in each frame), the receiver's accounting
 * (loss, reorder, duplicates per stream; a log-linear latency histogram) and one paced trial. No Python per frame.
 *
 * Latency: the payload carries CLOCK_MONOTONIC at send. The receive time is the kernel's software timestamp of the
 * frame (AF_PACKET's ring header, CLOCK_REALTIME) moved onto CLOCK_MONOTONIC by the offset between the two clocks
 * sampled at the start of the trial: a TPACKET_V3 block is handed to us only when it is retired (full, or after
 * its 2 ms timeout), so the time we see a frame is not the time it came. Without a kernel timestamp (AF_XDP), or
 * when the conversion gives an impossible value, the time of our poll is used (the result counts both kinds). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "fwd_int.h"

_Static_assert(sizeof(((struct dk_hist *)0)->buckets) / sizeof(uint64_t) == DK_HIST_BUCKETS, "cdef histogram size");
_Static_assert(sizeof(((struct dk_seq *)0)->bits) * 8 == DK_SEQ_WINDOW, "cdef window size");
_Static_assert(sizeof(((struct dk_pt_result *)0)->streams) / sizeof(struct dk_pt_stream) == DK_PT_MAX_STREAMS,
               "cdef streams");
_Static_assert(sizeof(((struct dk_pt_spec *)0)->pattern) / sizeof(uint16_t) == DK_PT_MAX_PATTERN, "cdef pattern");

#define SUB (1u << DK_HIST_SUB_BITS)
#define HIST_MAX ((1ull << 34) - 1)

/* ---- histogram ---------------------------------------------------------------------------------------------- */

void dk_hist_reset(struct dk_hist *h)
{
    memset(h, 0, sizeof *h);
}

int dk_hist_bucket(uint64_t ns)
{
    int e;

    if (ns > HIST_MAX)
        ns = HIST_MAX;
    if (ns < 2 * SUB)
        return (int)ns;
    e = 63 - __builtin_clzll(ns) - DK_HIST_SUB_BITS;       /* ns >> e is in [SUB, 2 SUB) */
    return e * (int)SUB + (int)(ns >> e);
}

uint64_t dk_hist_lowest(int bucket)
{
    int e;

    if (bucket < (int)(2 * SUB))
        return (uint64_t)bucket;
    e = bucket / (int)SUB - 1;
    return (uint64_t)(bucket - e * (int)SUB) << e;
}

uint64_t dk_hist_highest(int bucket)
{
    int e;

    if (bucket < (int)(2 * SUB))
        return (uint64_t)bucket;
    e = bucket / (int)SUB - 1;
    return dk_hist_lowest(bucket) + (1ull << e) - 1;
}

void dk_hist_record(struct dk_hist *h, uint64_t ns)
{
    if (ns > HIST_MAX)
        h->overflow++;
    if (!h->count || ns < h->min)
        h->min = ns;
    if (ns > h->max)
        h->max = ns;
    h->count++;
    h->sum += ns;
    h->buckets[dk_hist_bucket(ns)]++;
}

void dk_hist_merge(struct dk_hist *dst, const struct dk_hist *src)
{
    int i;

    if (!src->count)
        return;
    if (!dst->count || src->min < dst->min)
        dst->min = src->min;
    if (src->max > dst->max)
        dst->max = src->max;
    dst->count += src->count;
    dst->sum += src->sum;
    dst->overflow += src->overflow;
    for (i = 0; i < DK_HIST_BUCKETS; i++)
        dst->buckets[i] += src->buckets[i];
}

uint64_t dk_hist_percentile(const struct dk_hist *h, double p)
{
    uint64_t rank, seen = 0;
    int i;

    if (!h->count)
        return 0;
    if (p >= 100)
        return h->max;
    if (p < 0)
        p = 0;
    rank = (uint64_t)(p / 100.0 * (double)h->count + 0.999999999);   /* nearest rank, 1-based */
    if (rank < 1)
        rank = 1;
    for (i = 0; i < DK_HIST_BUCKETS; i++) {
        seen += h->buckets[i];
        if (seen >= rank) {
            uint64_t mid = (dk_hist_lowest(i) + dk_hist_highest(i)) / 2;
            /* never outside what was recorded */
            return mid < h->min ? h->min : mid > h->max ? h->max : mid;
        }
    }
    return h->max;
}

/* ---- sequence accounting ------------------------------------------------------------------------------------ */

void dk_seq_reset(struct dk_seq *s)
{
    memset(s, 0, sizeof *s);
}

static int bit_test_set(struct dk_seq *s, uint64_t seq)
{
    uint64_t i = seq % DK_SEQ_WINDOW, m = 1ull << (i % 64);
    int was = (s->bits[i / 64] & m) != 0;

    s->bits[i / 64] |= m;
    return was;
}

int dk_seq_account(struct dk_seq *s, uint64_t seq)
{
    s->rx++;
    if (seq >= s->next) {
        /* the window moves to end at seq: forget what the numbers it leaves behind saw */
        if (seq - s->next >= DK_SEQ_WINDOW) {
            memset(s->bits, 0, sizeof s->bits);
        } else {
            uint64_t x;
            for (x = s->next; x < seq; x++)
                s->bits[(x % DK_SEQ_WINDOW) / 64] &= ~(1ull << (x % 64));
        }
        s->bits[(seq % DK_SEQ_WINDOW) / 64] &= ~(1ull << (seq % 64));
        bit_test_set(s, seq);
        s->next = seq + 1;
        return 0;
    }
    if (s->next - seq > DK_SEQ_WINDOW) {
        s->reorder++;
        s->late_old++;
        return 3;
    }
    if (bit_test_set(s, seq)) {
        s->dup++;
        return 2;
    }
    s->reorder++;
    return 1;
}

/* ---- frames ------------------------------------------------------------------------------------------------- */

int dk_pt_build(uint8_t *p, int len, const uint8_t *dst, const uint8_t *src, int epoch, int stream, uint64_t seq,
                uint64_t send_ns)
{
    if (len < 60 || len > 1514)
        return -EINVAL;
    dk_udp_headers(p, len, dst, src, (uint16_t)(1024 + stream), DK_PT_UDP_PORT);
    p[42] = (uint8_t)epoch;
    p[43] = (uint8_t)stream;
    memcpy(p + 44, &seq, 8);
    memcpy(p + 52, &send_ns, 8);
    return len;
}

int dk_pt_parse(const uint8_t *p, uint32_t len, int *epoch, int *stream, uint64_t *seq, uint64_t *send_ns)
{
    if (len < DK_PT_HDR_LEN + DK_PT_PAYLOAD_LEN || p[12] != 0x08 || p[13] != 0x00 || p[14] != 0x45 || p[23] != 17)
        return 0;
    if (p[36] != (DK_PT_UDP_PORT >> 8) || p[37] != (DK_PT_UDP_PORT & 0xff))
        return 0;
    *epoch = p[42];
    *stream = p[43];
    memcpy(seq, p + 44, 8);
    memcpy(send_ns, p + 52, 8);
    return 1;
}

/* ---- the trial ---------------------------------------------------------------------------------------------- */

static uint64_t clock_ns(clockid_t id)
{
    struct timespec ts;

    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

struct trial {
    struct dk_fwd *f;
    const struct dk_pt_spec *spec;
    struct dk_pt_result *r;
    struct dk_seq seqs[DK_PT_MAX_STREAMS];
    uint64_t next_seq[DK_PT_MAX_STREAMS];
    int64_t real_minus_mono;         /* CLOCK_REALTIME - CLOCK_MONOTONIC at the start, ns */
    uint8_t *buf;                    /* burst frames */
    struct dk_pkt pkts[DK_MAX_BURST];
    uint64_t frame;                  /* frames built so far (pattern and stream position) */
};

static void account(struct trial *t, const struct dk_pkt *pk, uint64_t poll_ns)
{
    struct dk_pt_result *r = t->r;
    int epoch, stream, kind;
    uint64_t seq, sent, rx_mono;

    if (!dk_pt_parse(pk->data, pk->len, &epoch, &stream, &seq, &sent) || stream >= t->spec->nstreams) {
        r->rx_other++;
        return;
    }
    if (epoch != t->spec->epoch) {
        r->rx_stale++;
        return;
    }
    r->rx_packets++;
    r->rx_bytes += pk->len;
    kind = dk_seq_account(&t->seqs[stream], seq);
    if (kind == 2)
        return;                      /* a duplicate adds no latency sample */
    rx_mono = pk->rx_ns ? (uint64_t)((int64_t)pk->rx_ns - t->real_minus_mono) : 0;
    if (rx_mono && rx_mono >= sent && rx_mono <= poll_ns + 1000000) {
        r->kernel_ts++;
    } else {
        rx_mono = poll_ns;
        r->poll_ts++;
    }
    dk_hist_record(&r->latency, rx_mono > sent ? rx_mono - sent : 0);
}

static int receive(struct trial *t)
{
    struct dk_fwd *f = t->f;
    int p, n, i, total = 0;
    uint64_t now = clock_ns(CLOCK_MONOTONIC);

    for (p = 0; p < f->cfg.nports; p++) {
        struct dk_q *q = &f->port[p].q[0];
        n = f->ops->rx(q, t->pkts, DK_MAX_BURST);
        if (n < 0)
            return n;
        for (i = 0; i < n; i++)
            account(t, &t->pkts[i], now);
        if (n) {
            dk_add(&q->c.rx_packets, (uint64_t)n);
            f->ops->rx_done(q);
        }
        total += n;
    }
    return total;
}

/* Send what is due (at most a burst); returns frames offered. */
static int send_due(struct trial *t, double elapsed)
{
    const struct dk_pt_spec *s = t->spec;
    struct dk_pt_result *r = t->r;
    struct dk_fwd *f = t->f;
    struct dk_q *q = &f->port[0].q[0];
    uint64_t allowed = (uint64_t)f->cfg.burst, now;
    int n, i, sent;

    if (s->rate) {
        /* frame k is due at k / rate: rate x seconds frames in all, the first at once */
        double due = elapsed * (double)s->rate + 1, total = (double)s->rate * s->seconds + 0.5;
        if (due > total)
            due = total;
        allowed = due > (double)r->tried ? (uint64_t)(due - (double)r->tried) : 0;
    }
    if (s->max_frames && allowed > s->max_frames - r->tried)
        allowed = s->max_frames - r->tried;
    n = allowed < (uint64_t)f->cfg.burst ? (int)allowed : f->cfg.burst;
    if (n <= 0)
        return 0;
    now = clock_ns(CLOCK_MONOTONIC);
    for (i = 0; i < n; i++) {
        uint64_t k = t->frame + (uint64_t)i;
        int stream = (int)(k % (uint64_t)s->nstreams);
        int len = s->pattern[k % (uint64_t)s->npattern];
        uint8_t *frame = t->buf + (size_t)i * 1514;
        dk_pt_build(frame, len, s->peer, f->port[0].mac, s->epoch, stream, t->next_seq[stream]++, now);
        t->pkts[i].data = frame;
        t->pkts[i].len = (uint32_t)len;
    }
    sent = f->ops->tx(q, t->pkts, n);
    if (sent < 0)
        sent = 0;
    /* a frame the kernel did not take was not offered: its stream's count stays as it is */
    for (i = 0; i < sent; i++) {
        r->tx_bytes += t->pkts[i].len;
        r->streams[(t->frame + (uint64_t)i) % (uint64_t)s->nstreams].tx++;
    }
    r->tried += (uint64_t)n;
    r->tx_packets += (uint64_t)sent;
    r->tx_dropped += (uint64_t)(n - sent);
    dk_add(&q->c.tx_packets, (uint64_t)sent);
    dk_add(&q->c.tx_dropped, (uint64_t)(n - sent));
    t->frame += (uint64_t)n;
    return n;
}

static int check_spec(const struct dk_fwd *f, const struct dk_pt_spec *s)
{
    int i;

    if (f->cfg.backend != DK_BACKEND_AF_PACKET || f->cfg.queues != 1)
        return -EINVAL;
    if (s->nstreams < 1 || s->nstreams > DK_PT_MAX_STREAMS || s->npattern < 1 || s->npattern > DK_PT_MAX_PATTERN)
        return -EINVAL;
    if (!(s->seconds >= 0) || !(s->drain >= 0) || s->epoch < 0 || s->epoch > 255)
        return -EINVAL;
    for (i = 0; i < s->npattern; i++)
        if (s->pattern[i] < 60 || s->pattern[i] > 1514)
            return -EINVAL;
    return 0;
}

static uint64_t kernel_drops(struct dk_fwd *f)
{
    uint64_t total = 0;
    int p;

    for (p = 0; p < f->cfg.nports; p++) {
        f->ops->drops(&f->port[p].q[0]);
        total += dk_get(&f->port[p].q[0].c.kernel_rx_dropped);
    }
    return total;
}

int dk_pt_trial(struct dk_fwd *f, const struct dk_pt_spec *spec, struct dk_pt_result *out)
{
    struct trial *tp;                        /* the windows are 64 KiB: not on the stack */
    uint64_t t0, drops0, last_rx;
    double elapsed = 0, last_send = 0;
    int rc = check_spec(f, spec), i, sending = 1;

    if (rc)
        return rc;
    memset(out, 0, sizeof *out);
    tp = calloc(1, sizeof *tp);
    if (!tp)
        return -ENOMEM;
    tp->f = f;
    tp->spec = spec;
    tp->r = out;
    tp->buf = calloc((size_t)DK_MAX_BURST, 1514);
    if (!tp->buf) {
        free(tp);
        return -ENOMEM;
    }
    drops0 = kernel_drops(f);
    tp->real_minus_mono = (int64_t)clock_ns(CLOCK_REALTIME) - (int64_t)clock_ns(CLOCK_MONOTONIC);
    t0 = clock_ns(CLOCK_MONOTONIC);
    last_rx = t0;
    for (;;) {
        int got, offered = 0;

        elapsed = (double)(clock_ns(CLOCK_MONOTONIC) - t0) * 1e-9;
        if (__atomic_load_n(&f->stop, __ATOMIC_RELAXED)) {
            out->interrupted = 1;
            break;
        }
        /* sending ends when every frame is out, or 1 % after its time (late frames of a descheduled sender are
         * caught up within the 1 % the rate may be off; what is still missing then says the rate was not met) */
        if (sending && (elapsed >= spec->seconds * (spec->rate ? 1.01 : 1.0) ||
                        (spec->rate && (double)out->tried >= (double)spec->rate * spec->seconds + 0.5 - 1) ||
                        (spec->max_frames && out->tried >= spec->max_frames))) {
            sending = 0;
            last_send = elapsed;
        }
        if (!sending && elapsed >= last_send + spec->drain)
            break;
        if (sending)
            offered = send_due(tp, elapsed);
        got = receive(tp);
        if (got < 0) {
            rc = got;
            break;
        }
        if (got)
            last_rx = clock_ns(CLOCK_MONOTONIC);
        /* nothing to do: spin while frames may come or are due soon, else nap briefly (the receive time is the
         * kernel's, so a nap does not move latency) */
        if (!offered && !got) {
            if (clock_ns(CLOCK_MONOTONIC) - last_rx < 1000000 || (sending && spec->rate > 20000))
                cpu_relax();
            else {
                struct timespec ts = {0, 20000};
                nanosleep(&ts, NULL);
            }
        }
    }
    if (sending)
        last_send = elapsed;
    out->elapsed = elapsed;
    out->tx_seconds = last_send;
    out->rx_kernel_dropped = kernel_drops(f) - drops0;
    for (i = 0; i < spec->nstreams; i++) {
        struct dk_pt_stream *s = &out->streams[i];
        uint64_t unique;
        s->rx = tp->seqs[i].rx;
        s->dup = tp->seqs[i].dup;
        s->reorder = tp->seqs[i].reorder;
        s->late_old = tp->seqs[i].late_old;
        unique = s->rx - s->dup;
        out->dup += s->dup;
        out->reorder += s->reorder;
        out->lost += s->tx > unique ? s->tx - unique : 0;
    }
    out->offered_pps = spec->seconds > 0 ? (double)out->tx_packets / spec->seconds : 0;
    if (spec->rate && !spec->max_frames) {
        double want = (double)spec->rate * spec->seconds;
        out->rate_ok = !out->interrupted && want > 0 && (double)out->tx_packets >= want * 0.99 &&
                       (double)out->tx_packets <= want * 1.01;
    } else {
        out->rate_ok = 1;
    }
    free(tp->buf);
    free(tp);
    return rc;
}
