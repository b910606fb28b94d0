/* AF_PACKET backend: a TPACKET_V3 receive ring, transmit by sendmmsg or a TPACKET_V2 PACKET_TX_RING,
 * PACKET_QDISC_BYPASS on the transmit socket, PACKET_FANOUT (hash) across queues. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <endian.h>
#include <errno.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/virtio_net.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>
#include "fwd_int.h"

/* Many blocks: at a low rate the 2 ms retire timeout closes blocks holding a few frames each, so the number of
 * blocks is what buffers a descheduled reader (256 x 2 ms); at a high rate 64 KiB hold ~450 64-byte frames, and a
 * sleeping reader is woken once per block (each wakeup an IPI the sender's core pays for). */
#define RX_BLOCK_SIZE (1u << 16)
#define RX_BLOCK_NR 256u
#define RX_FRAME_SIZE 2048u
#define TX_FRAME_SIZE 2048u
#define TX_FRAME_NR ((unsigned)DK_RING_SIZE)

struct afp {
    int rxfd, txfd;
    uint8_t *rx_map, *tx_map;
    size_t rx_len, tx_len;
    unsigned blk;                 /* the receive block we read */
    unsigned left;                /* frames not yet handed out in it */
    struct tpacket3_hdr *next;    /* next frame in it */
    int held;                     /* the block is ours (TP_STATUS_USER) */
    unsigned tx_head;             /* next TX ring frame */
    int use_ring;
    int vnet;                     /* TX ring frames carry a virtio_net_hdr (see open_tx) */
    struct mmsghdr msgs[DK_MAX_BURST];
    struct iovec iov[DK_MAX_BURST];
};

static int sockopt(int fd, int opt, const void *val, socklen_t len, const char *what, const char *ifname,
                   char *err, size_t errlen)
{
    if (setsockopt(fd, SOL_PACKET, opt, val, len) == 0)
        return 0;
    dk_errf(err, errlen, "%s on %s: %s", what, ifname, strerror(errno));
    return -errno;
}

static int bind_to(int fd, int proto, const struct dk_port *port, char *err, size_t errlen)
{
    struct sockaddr_ll sll;

    memset(&sll, 0, sizeof sll);
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = (uint16_t)htons((uint16_t)proto);
    sll.sll_ifindex = port->ifindex;
    if (bind(fd, (struct sockaddr *)&sll, sizeof sll) == 0)
        return 0;
    dk_errf(err, errlen, "bind AF_PACKET socket to %s: %s", port->ifname, strerror(errno));
    return -errno;
}

static int open_rx(struct afp *a, const struct dk_fwd *f, const struct dk_q *q, char *err, size_t errlen)
{
    const struct dk_port *port = &f->port[q->port];
    int v3 = TPACKET_V3, one = 1, rc;
    struct tpacket_req3 req;

    a->rxfd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
    if (a->rxfd < 0) {
        dk_errf(err, errlen, "AF_PACKET socket: %s", strerror(errno));
        return -errno;
    }
    memset(&req, 0, sizeof req);
    req.tp_block_size = RX_BLOCK_SIZE;
    req.tp_block_nr = RX_BLOCK_NR;
    req.tp_frame_size = RX_FRAME_SIZE;
    req.tp_frame_nr = RX_BLOCK_SIZE / RX_FRAME_SIZE * RX_BLOCK_NR;
    req.tp_retire_blk_tov = 2;    /* ms: a lightly loaded port still sees its frames promptly */
    if ((rc = sockopt(a->rxfd, PACKET_VERSION, &v3, sizeof v3, "PACKET_VERSION", port->ifname, err, errlen)) ||
        (rc = sockopt(a->rxfd, PACKET_RX_RING, &req, sizeof req, "PACKET_RX_RING", port->ifname, err, errlen)))
        return rc;
    /* our own transmissions are not input */
    setsockopt(a->rxfd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof one);
    a->rx_len = (size_t)RX_BLOCK_SIZE * RX_BLOCK_NR;
    a->rx_map = mmap(NULL, a->rx_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, a->rxfd, 0);
    if (a->rx_map == MAP_FAILED) {
        a->rx_map = NULL;
        dk_errf(err, errlen, "mmap the receive ring of %s: %s", port->ifname, strerror(errno));
        return -errno;
    }
    if ((rc = bind_to(a->rxfd, ETH_P_ALL, port, err, errlen)))
        return rc;
    if (f->cfg.queues > 1) {
        int fanout = (f->fanout_id + q->port) | (PACKET_FANOUT_HASH << 16);
        if ((rc = sockopt(a->rxfd, PACKET_FANOUT, &fanout, sizeof fanout, "PACKET_FANOUT", port->ifname,
                          err, errlen)))
            return rc;
    }
    return 0;
}

static int open_tx(struct afp *a, const struct dk_fwd *f, const struct dk_q *q, char *err, size_t errlen)
{
    const struct dk_port *port = &f->port[q->port];
    int one = 1, v2 = TPACKET_V2, rc;
    struct tpacket_req req;

    /* protocol 0: this socket only sends */
    a->txfd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
    if (a->txfd < 0) {
        dk_errf(err, errlen, "AF_PACKET socket: %s", strerror(errno));
        return -errno;
    }
    if ((rc = sockopt(a->txfd, PACKET_QDISC_BYPASS, &one, sizeof one, "PACKET_QDISC_BYPASS", port->ifname,
                      err, errlen)))
        return rc;
    if (a->use_ring) {
        /* A virtio_net_hdr in front of each frame lets us say how much of it the kernel copies into the skb's
         * linear part (hdr_len): the whole frame. Without it only the Ethernet header is copied and the rest
         * hangs off the ring's pages, a non-linear skb every receiver then has to pull. */
        a->vnet = setsockopt(a->txfd, SOL_PACKET, PACKET_VNET_HDR, &one, sizeof one) == 0;
        memset(&req, 0, sizeof req);
        req.tp_block_size = TX_FRAME_SIZE * 32;
        req.tp_frame_size = TX_FRAME_SIZE;
        req.tp_frame_nr = TX_FRAME_NR;
        req.tp_block_nr = TX_FRAME_NR / 32;
        if ((rc = sockopt(a->txfd, PACKET_VERSION, &v2, sizeof v2, "PACKET_VERSION", port->ifname, err, errlen)) ||
            (rc = sockopt(a->txfd, PACKET_TX_RING, &req, sizeof req, "PACKET_TX_RING", port->ifname, err, errlen)))
            return rc;
        a->tx_len = (size_t)TX_FRAME_SIZE * TX_FRAME_NR;
        a->tx_map = mmap(NULL, a->tx_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, a->txfd, 0);
        if (a->tx_map == MAP_FAILED) {
            a->tx_map = NULL;
            dk_errf(err, errlen, "mmap the transmit ring of %s: %s", port->ifname, strerror(errno));
            return -errno;
        }
    }
    return bind_to(a->txfd, 0, port, err, errlen);
}

static int afp_open(struct dk_q *q, struct dk_fwd *f, char *err, size_t errlen)
{
    struct afp *a = calloc(1, sizeof *a);
    struct dk_port *port = &f->port[q->port];
    int rc;

    if (!a)
        return -ENOMEM;
    a->rxfd = a->txfd = -1;
    a->use_ring = f->cfg.tx_method == DK_TX_RING;
    q->priv = a;
    if ((rc = open_rx(a, f, q, err, errlen)) || (rc = open_tx(a, f, q, err, errlen)))
        return rc;
    snprintf(port->detail, sizeof port->detail, "af_packet: TPACKET_V3 rx ring, tx by %s, qdisc bypass%s",
             a->use_ring ? (a->vnet ? "PACKET_TX_RING (linear via virtio_net_hdr)" : "PACKET_TX_RING") : "sendmmsg",
             f->cfg.queues > 1 ? ", fanout hash" : "");
    return 0;
}

static struct tpacket_block_desc *block(struct afp *a, unsigned i)
{
    return (struct tpacket_block_desc *)(void *)(a->rx_map + (size_t)i * RX_BLOCK_SIZE);
}

static int afp_rx(struct dk_q *q, struct dk_pkt *pkts, int n)
{
    struct afp *a = q->priv;
    int i;

    if (!a->held) {
        struct tpacket_block_desc *bd = block(a, a->blk);
        if (!(__atomic_load_n(&bd->hdr.bh1.block_status, __ATOMIC_ACQUIRE) & TP_STATUS_USER))
            return 0;
        a->held = 1;
        a->left = bd->hdr.bh1.num_pkts;
        a->next = (struct tpacket3_hdr *)(void *)((uint8_t *)bd + bd->hdr.bh1.offset_to_first_pkt);
    }
    for (i = 0; i < n && a->left; i++) {
        struct tpacket3_hdr *h = a->next;
        pkts[i].data = (uint8_t *)h + h->tp_mac;
        pkts[i].len = h->tp_snaplen;
        pkts[i].rx_ns = (uint64_t)h->tp_sec * 1000000000u + h->tp_nsec;
        a->next = (struct tpacket3_hdr *)(void *)((uint8_t *)h + h->tp_next_offset);
        a->left--;
    }
    if (i == 0 && a->held && !a->left) {   /* an empty block: give it back */
        __atomic_store_n(&block(a, a->blk)->hdr.bh1.block_status, TP_STATUS_KERNEL, __ATOMIC_RELEASE);
        a->blk = (a->blk + 1) % RX_BLOCK_NR;
        a->held = 0;
    }
    return i;
}

static void afp_rx_done(struct dk_q *q)
{
    struct afp *a = q->priv;

    if (a->held && !a->left) {
        __atomic_store_n(&block(a, a->blk)->hdr.bh1.block_status, TP_STATUS_KERNEL, __ATOMIC_RELEASE);
        a->blk = (a->blk + 1) % RX_BLOCK_NR;
        a->held = 0;
    }
}

static int tx_mmsg(struct dk_q *q, struct afp *a, const struct dk_pkt *pkts, int n)
{
    int i, sent;

    for (i = 0; i < n; i++) {
        a->iov[i].iov_base = pkts[i].data;
        a->iov[i].iov_len = pkts[i].len;
        memset(&a->msgs[i].msg_hdr, 0, sizeof a->msgs[i].msg_hdr);
        a->msgs[i].msg_hdr.msg_iov = &a->iov[i];
        a->msgs[i].msg_hdr.msg_iovlen = 1;
    }
    sent = sendmmsg(a->txfd, a->msgs, (unsigned)n, MSG_DONTWAIT);
    if (sent < 0) {
        /* a full queue or a dropping peer is a drop; anything else an error as well */
        if (errno != EAGAIN && errno != ENOBUFS)
            dk_add(&q->c.tx_errors, 1);
        return 0;
    }
    return sent;
}

static struct tpacket2_hdr *tx_frame(struct afp *a, unsigned i)
{
    return (struct tpacket2_hdr *)(void *)(a->tx_map + (size_t)(i % TX_FRAME_NR) * TX_FRAME_SIZE);
}

static int tx_ring(struct dk_q *q, struct afp *a, const struct dk_pkt *pkts, int n)
{
    const size_t off = TPACKET_ALIGN(sizeof(struct tpacket2_hdr));
    unsigned start = a->tx_head, i, queued = 0;
    int sent = 0;

    for (i = 0; i < (unsigned)n; i++) {
        struct tpacket2_hdr *h = tx_frame(a, a->tx_head);
        uint32_t st = __atomic_load_n(&h->tp_status, __ATOMIC_ACQUIRE);
        if (st != TP_STATUS_AVAILABLE && st != TP_STATUS_WRONG_FORMAT)
            break;                /* ring full: the rest is dropped */
        if (pkts[i].len + (a->vnet ? sizeof(struct virtio_net_hdr) : 0) > TX_FRAME_SIZE - off)
            continue;
        if (a->vnet) {
            struct virtio_net_hdr vh = { .hdr_len = htole16((uint16_t)pkts[i].len) };
            memcpy((uint8_t *)h + off, &vh, sizeof vh);
            memcpy((uint8_t *)h + off + sizeof vh, pkts[i].data, pkts[i].len);
            h->tp_len = (uint32_t)(pkts[i].len + sizeof vh);
        } else {
            memcpy((uint8_t *)h + off, pkts[i].data, pkts[i].len);
            h->tp_len = pkts[i].len;
        }
        __atomic_store_n(&h->tp_status, TP_STATUS_SEND_REQUEST, __ATOMIC_RELEASE);
        a->tx_head = (a->tx_head + 1) % TX_FRAME_NR;
        queued++;
    }
    if (!queued)
        return 0;
    if (send(a->txfd, NULL, 0, MSG_DONTWAIT) < 0 && errno != EAGAIN && errno != ENOBUFS)
        dk_add(&q->c.tx_errors, 1);
    /* a frame the kernel did not take is still SEND_REQUEST: take it back, it counts as dropped */
    for (i = 0; i < queued; i++) {
        struct tpacket2_hdr *h = tx_frame(a, start + i);
        uint32_t st = __atomic_load_n(&h->tp_status, __ATOMIC_ACQUIRE);
        if (st == TP_STATUS_SEND_REQUEST || st == TP_STATUS_WRONG_FORMAT)
            __atomic_store_n(&h->tp_status, TP_STATUS_AVAILABLE, __ATOMIC_RELEASE);
        else
            sent++;
    }
    return sent;
}

static int afp_tx(struct dk_q *q, const struct dk_pkt *pkts, int n)
{
    struct afp *a = q->priv;

    return a->use_ring ? tx_ring(q, a, pkts, n) : tx_mmsg(q, a, pkts, n);
}

static void afp_drops(struct dk_q *q)
{
    struct afp *a = q->priv;
    struct tpacket_stats_v3 st;
    socklen_t len = sizeof st;

    /* the kernel resets these counters on every read: accumulate */
    if (a && getsockopt(a->rxfd, SOL_PACKET, PACKET_STATISTICS, &st, &len) == 0)
        dk_add(&q->c.kernel_rx_dropped, st.tp_drops);
}

static int afp_pollfd(struct dk_q *q)
{
    return ((struct afp *)q->priv)->rxfd;
}

static void afp_close(struct dk_q *q, struct dk_fwd *f)
{
    struct afp *a = q->priv;

    (void)f;
    if (a->rx_map)
        munmap(a->rx_map, a->rx_len);
    if (a->tx_map)
        munmap(a->tx_map, a->tx_len);
    if (a->rxfd >= 0)
        close(a->rxfd);
    if (a->txfd >= 0)
        close(a->txfd);
    free(a);
    q->priv = NULL;
}

const struct dk_backend_ops dk_af_packet_ops = {
    .name = "af_packet",
    .open = afp_open,
    .rx = afp_rx,
    .rx_done = afp_rx_done,
    .tx = afp_tx,
    .drops = afp_drops,
    .pollfd = afp_pollfd,
    .close = afp_close,
};
