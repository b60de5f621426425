// SPDX-License-Identifier: Apache-2.0
/*
 * delayline: a user-space delay line between two interfaces, for kernels
 * without sch_netem.
 *
 *   delayline --a IF --b IF --delay-ab MS --delay-ba MS
 *             [--rate-ab BPS] [--loss-ab P] [--queue-ab BYTES] [--burst-ab BYTES]
 *             [... the same for ba, or without the suffix for both] [--seed N]
 *
 * Every frame arriving on A leaves on B (direction ab) and every frame
 * arriving on B leaves on A (ba), after a fixed delay, shaped by an optional
 * token bucket, with optional random loss, through a bounded drop-tail
 * queue. A and B are normally the ends of two veth pairs in a namespace of
 * their own (tools/topology.py builds that).
 *
 * Frames are read and written with AF_PACKET sockets and PACKET_VNET_HDR:
 * a GSO or GRO super-frame of up to 64 KiB passes whole, its virtio_net_hdr
 * (segment size, checksum still to be filled in) read on one side and
 * handed back to the kernel on the other. That keeps the packet rate at a
 * fiftieth of the wire's and is what lets one core carry several Gbit/s.
 * Loss is per wire packet: a super-frame that loses some of its segments is
 * cut into the surviving segments here (TCP; other GSO types lose the whole
 * frame).
 *
 * One thread per direction: it takes each frame's arrival from the kernel's
 * receive stamp (moved to CLOCK_MONOTONIC), gives it a departure time
 * (arrival, then the token bucket, plus the delay), stores it in the
 * direction's ring and sleeps in ppoll() until the earlier of the next
 * departure and the next arrival. Departure times never decrease, so the
 * ring is a FIFO. Timer slack is at its minimum (the default 50 us would be
 * jitter) and the threads run SCHED_FIFO (--no-realtime: not), so a busy
 * CPU does not make frames late by milliseconds. --one-thread serves both
 * directions from one loop, for comparison (tools/delayline/README.md).
 *
 * Prints "ready" on stdout once both interfaces are bound and the threads
 * run; SIGTERM or SIGINT stop it, and it prints each direction's counters
 * on stderr, one line each: "delayline ab forwarded=N packets=N ...".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/virtio_net.h>
#include <net/if.h>
#include <netinet/ip.h>
#include <netinet/ip6.h>
#include <netinet/tcp.h>
#include <netinet/udp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define NSEC_PER_SEC 1000000000ULL
#define NSEC_PER_MSEC 1000000ULL
#define NSEC_PER_USEC 1000ULL
#define MSEC_PER_SEC 1000ULL
#define BITS_PER_BYTE 8

/* The largest frame: 64 KiB of IP (the kernel's default GSO and GRO
 * limit), its Ethernet header and two VLAN tags. Larger ones are counted as
 * truncated and dropped. */
#define VLAN_HLEN 4
#define VLAN_TAGS_MAX 2
#define IP_PACKET_MAX 65536
#define FRAME_MAX (IP_PACKET_MAX + ETH_HLEN + VLAN_TAGS_MAX * VLAN_HLEN)
/* Packet sockets put the virtio header in host byte order ("legacy"). */
#define VNET_HLEN sizeof(struct virtio_net_hdr)

/* Ring records start on a cache line; one record holds a frame, its
 * virtio header and room to put back a VLAN tag the kernel took off. */
#define REC_ALIGN 64
#define REC_DATA_MAX (VLAN_HLEN + VNET_HLEN + FRAME_MAX)

/* Default queue: what one direction holds at 1 Gbit/s for 200 ms. */
#define DEFAULT_RATE_FOR_QUEUE_BPS 1000000000ULL
#define DEFAULT_QUEUE_MS 200ULL
#define DEFAULT_QUEUE_BYTES \
	(DEFAULT_RATE_FOR_QUEUE_BPS / BITS_PER_BYTE * DEFAULT_QUEUE_MS / MSEC_PER_SEC)

/* Socket buffers: some 60 ms of 1 Gbit/s arriving while a thread is busy
 * (what the kernel allows in truesize is twice this). */
#define SOCKET_BUFFER_BYTES (8U << 20)
#define RT_PRIORITY 1
/* A kernel receive stamp older than this is not believed (clock set). */
#define STAMP_AGE_MAX_NS NSEC_PER_SEC
/* Frames read, and frames sent, before looking at the other. */
#define RX_BATCH 64
#define TX_BATCH 64
/* Enough bits to mark every segment of a super-frame lost or not. */
#define SEGS_MAX FRAME_MAX
#define BITS_PER_WORD 64
#define LOSS_WORDS ((SEGS_MAX + BITS_PER_WORD - 1) / BITS_PER_WORD)

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_PSH 0x08
#define TCP_FLAG_CWR 0x80
#define TCP_FLAGS_OFFSET 13
#define TCP_DOFF_OFFSET 12
#define IPV4_IHL_MASK 0x0f
#define WORD_BYTES 4 /* IPv4 ihl and TCP doff count these */

enum rec_kind { REC_FRAME = 1, REC_WRAP = 2 };

struct record {
	uint64_t due_ns;     /* CLOCK_MONOTONIC: when it leaves */
	uint32_t len;        /* virtio header plus frame */
	uint32_t kind;       /* enum rec_kind */
	uint32_t segs;       /* wire packets in the frame */
	uint32_t wire_bytes; /* their bytes, each with its headers */
	uint32_t off;        /* where in data the virtio header starts */
	uint32_t pad;        /* data on an 8-byte boundary */
	uint8_t data[];
};

#define REC_MAX (sizeof(struct record) + REC_DATA_MAX + REC_ALIGN)

/* A FIFO of variable-size records in one buffer. Records never wrap: when
 * the space at the end is too small for the largest record, a REC_WRAP
 * marker sends the reader back to the start. Sized limit + 2 * REC_MAX, so
 * while used <= limit there is always REC_MAX of contiguous room at tail. */
struct ring {
	uint8_t *buf;
	size_t cap;
	size_t head;
	size_t tail;
	size_t used;  /* bytes of live records, markers not counted */
	size_t limit; /* the queue's size: drop-tail above it */
	uint64_t frames;
};

/* A token bucket, kept as the time it would be full again (tat_ns). */
struct shaper {
	uint64_t rate_bps; /* 0: no limit */
	uint64_t burst_bytes;
	uint64_t tat_ns;
	uint64_t last_departure_ns;
};

struct counters {
	uint64_t frames;     /* forwarded */
	uint64_t packets;    /* forwarded, segments of super-frames counted */
	uint64_t bytes;      /* forwarded wire bytes */
	uint64_t lost;       /* packets dropped by --loss */
	uint64_t queue_drop; /* frames dropped because the queue was full */
	uint64_t send_fail;  /* frames the outgoing interface refused */
	uint64_t truncated;  /* frames larger than FRAME_MAX */
	uint64_t rx_drop;    /* frames the receiving socket's buffer had no room for */
	uint64_t left;       /* frames still queued at exit */
	uint64_t late_ns;    /* sum over forwarded frames of how late each left */
	uint64_t late_max_ns;
};

struct direction {
	const char *name;
	int rx_fd;
	int tx_fd;
	uint64_t delay_ns;
	double loss;
	struct shaper shaper;
	struct ring ring;
	struct counters cnt;
	uint64_t rng;
	uint64_t lost_map[LOSS_WORDS];
	uint8_t *scratch;
};

#define DIRECTIONS 2

/* A thread and the directions it serves: one each, or both (--one-thread). */
struct worker {
	struct direction *dirs[DIRECTIONS];
	int n;
	int stop_fd;
	bool realtime;
	pthread_t thread;
	int error; /* errno that ended the thread, 0 on a clean stop */
};

struct frame_info {
	size_t l3;   /* offset of the IP header */
	size_t l4;   /* offset of the TCP or UDP header */
	size_t hlen; /* all headers, Ethernet to TCP or UDP */
	bool ipv6;
	bool tcp;
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * NSEC_PER_SEC + (uint64_t)ts.tv_nsec;
}

static uint64_t max_u64(uint64_t a, uint64_t b)
{
	return a > b ? a : b;
}

static size_t align_up(size_t n, size_t a)
{
	return (n + a - 1) / a * a;
}

/* splitmix64: small, fast, and good enough for Bernoulli loss. */
static uint64_t rng_next(uint64_t *state)
{
	uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static bool rng_chance(uint64_t *state, double p)
{
	/* 53 random bits as a double in [0, 1). */
	return (double)(rng_next(state) >> 11) * 0x1.0p-53 < p;
}

/* ---- the ring ---- */

static size_t rec_size(size_t data_len)
{
	return align_up(sizeof(struct record) + data_len, REC_ALIGN);
}

static int ring_init(struct ring *r, size_t limit)
{
	r->limit = limit;
	r->cap = align_up(limit, REC_ALIGN) + 2 * align_up(REC_MAX, REC_ALIGN);
	r->buf = mmap(NULL, r->cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (r->buf == MAP_FAILED)
		return -errno;
	r->head = r->tail = r->used = 0;
	r->frames = 0;
	return 0;
}

static void ring_free(struct ring *r)
{
	if (r->buf && r->buf != MAP_FAILED)
		munmap(r->buf, r->cap);
}

/* Room for one record of up to REC_MAX bytes at tail. */
static struct record *ring_reserve(struct ring *r)
{
	if (r->cap - r->tail < REC_MAX) {
		if (r->tail < r->cap)
			((struct record *)(r->buf + r->tail))->kind = REC_WRAP;
		r->tail = 0;
	}
	return (struct record *)(r->buf + r->tail);
}

static bool ring_fits(const struct ring *r, size_t data_len)
{
	return r->used + rec_size(data_len) <= r->limit;
}

static void ring_commit(struct ring *r, struct record *rec)
{
	size_t size = rec_size(rec->off + rec->len);

	rec->kind = REC_FRAME;
	r->tail += size;
	r->used += size;
	r->frames++;
}

static struct record *ring_head(struct ring *r)
{
	while (r->head != r->tail) {
		struct record *rec;

		if (r->head == r->cap) {
			r->head = 0;
			continue;
		}
		rec = (struct record *)(r->buf + r->head);
		if (rec->kind == REC_WRAP) {
			r->head = 0;
			continue;
		}
		return rec;
	}
	return NULL;
}

static void ring_pop(struct ring *r, struct record *rec)
{
	size_t size = rec_size(rec->off + rec->len);

	r->head += size;
	r->used -= size;
	r->frames--;
	if (!r->used) /* empty: start again at the front, fewer wraps */
		r->head = r->tail = 0;
}

/* ---- the token bucket ---- */

static uint64_t bytes_to_ns(uint64_t bytes, uint64_t rate_bps)
{
	return (uint64_t)((unsigned __int128)bytes * BITS_PER_BYTE * NSEC_PER_SEC / rate_bps);
}

/* When a packet of this many bytes, arriving now, may leave: at once while
 * the bucket holds its bytes in tokens, else once enough have come in. FIFO:
 * never before the previous packet. */
static uint64_t shaper_departure(struct shaper *s, uint64_t arrival, uint64_t bytes)
{
	uint64_t start, credit, departure;

	if (!s->rate_bps)
		return arrival;
	start = max_u64(arrival, s->last_departure_ns);
	credit = s->burst_bytes > bytes ? bytes_to_ns(s->burst_bytes - bytes, s->rate_bps) : 0;
	departure = max_u64(start, s->tat_ns > credit ? s->tat_ns - credit : 0);
	s->tat_ns = max_u64(s->tat_ns, departure) + bytes_to_ns(bytes, s->rate_bps);
	s->last_departure_ns = departure;
	return departure;
}

/* ---- frames ---- */

static uint16_t get16(const uint8_t *p)
{
	uint16_t v;

	memcpy(&v, p, sizeof(v));
	return ntohs(v);
}

static void put16(uint8_t *p, uint16_t host)
{
	uint16_t v = htons(host);

	memcpy(p, &v, sizeof(v));
}

/* Ethernet, up to two VLAN tags, IPv4 or IPv6 (no extension headers), TCP
 * or UDP. Returns false for anything else or a frame too short for its
 * headers. */
static bool parse_l4(const uint8_t *f, size_t len, struct frame_info *fi)
{
	size_t off = ETH_HLEN;
	uint16_t proto;
	uint8_t l4proto;
	int tags;

	memset(fi, 0, sizeof(*fi));
	if (len < ETH_HLEN)
		return false;
	proto = get16(f + ETH_ALEN * 2);
	for (tags = 0; tags < VLAN_TAGS_MAX && (proto == ETH_P_8021Q || proto == ETH_P_8021AD);
	     tags++) {
		if (len < off + VLAN_HLEN)
			return false;
		proto = get16(f + off + sizeof(uint16_t));
		off += VLAN_HLEN;
	}
	fi->l3 = off;
	if (proto == ETH_P_IP) {
		size_t ihl;

		if (len < off + sizeof(struct iphdr))
			return false;
		ihl = (size_t)(f[off] & IPV4_IHL_MASK) * WORD_BYTES;
		if (ihl < sizeof(struct iphdr))
			return false;
		l4proto = f[off + offsetof(struct iphdr, protocol)];
		fi->l4 = off + ihl;
	} else if (proto == ETH_P_IPV6) {
		if (len < off + sizeof(struct ip6_hdr))
			return false;
		l4proto = f[off + offsetof(struct ip6_hdr, ip6_nxt)];
		fi->l4 = off + sizeof(struct ip6_hdr);
		fi->ipv6 = true;
	} else {
		return false;
	}
	if (l4proto == IPPROTO_UDP) {
		fi->hlen = fi->l4 + sizeof(struct udphdr);
		return len >= fi->hlen;
	}
	if (l4proto != IPPROTO_TCP || len < fi->l4 + sizeof(struct tcphdr))
		return false;
	fi->hlen = fi->l4 + (size_t)(f[fi->l4 + TCP_DOFF_OFFSET] >> 4) * WORD_BYTES;
	if (fi->hlen < fi->l4 + sizeof(struct tcphdr) || len < fi->hlen)
		return false;
	fi->tcp = true;
	return true;
}

static bool is_gso(const struct virtio_net_hdr *vh)
{
	return (vh->gso_type & ~VIRTIO_NET_HDR_GSO_ECN) != VIRTIO_NET_HDR_GSO_NONE &&
	       vh->gso_size;
}

/* Wire packets in a super-frame (hlen: its headers, repeated in each). */
static uint32_t gso_segments(size_t len, size_t hlen, const struct virtio_net_hdr *vh)
{
	size_t payload = len > hlen ? len - hlen : 0;

	return payload ? (uint32_t)((payload + vh->gso_size - 1) / vh->gso_size) : 1;
}

static uint32_t csum_add(uint32_t sum, const uint8_t *p, size_t len)
{
	size_t i;

	for (i = 0; i + 1 < len; i += 2)
		sum += (uint32_t)p[i] << 8 | p[i + 1];
	if (len & 1)
		sum += (uint32_t)p[len - 1] << 8;
	return sum;
}

static uint16_t csum_fold(uint32_t sum)
{
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)~sum;
}

/* Fills in a complete TCP checksum (the segment leaves with no offload). */
static void tcp_checksum(uint8_t *f, const struct frame_info *fi, size_t tcp_len)
{
	uint8_t *tcp = f + fi->l4;
	uint32_t sum = 0;

	put16(tcp + offsetof(struct tcphdr, check), 0);
	if (fi->ipv6) {
		const struct ip6_hdr *ip6 = (const struct ip6_hdr *)(f + fi->l3);

		sum = csum_add(sum, (const uint8_t *)&ip6->ip6_src, 2 * sizeof(ip6->ip6_src));
	} else {
		const struct iphdr *ip = (const struct iphdr *)(f + fi->l3);

		sum = csum_add(sum, (const uint8_t *)&ip->saddr, 2 * sizeof(ip->saddr));
	}
	sum += IPPROTO_TCP + (uint32_t)tcp_len;
	sum = csum_add(sum, tcp, tcp_len);
	put16(tcp + offsetof(struct tcphdr, check), csum_fold(sum));
}

/* Segment i of a TCP super-frame's headers, as the kernel's GSO makes it:
 * lengths, IPv4 id and checksum, sequence number, FIN/PSH only on the last
 * segment, CWR only on the first. */
static void fix_segment_headers(uint8_t *f, const struct frame_info *fi, uint32_t i,
				uint32_t segs, size_t mss, size_t payload)
{
	uint8_t *tcp = f + fi->l4;
	size_t tcp_len = fi->hlen - fi->l4 + payload;
	uint32_t seq;

	if (fi->ipv6) {
		put16(f + fi->l3 + offsetof(struct ip6_hdr, ip6_plen), (uint16_t)tcp_len);
	} else {
		uint8_t *ip = f + fi->l3;
		size_t ihl = fi->l4 - fi->l3;

		put16(ip + offsetof(struct iphdr, tot_len), (uint16_t)(ihl + tcp_len));
		put16(ip + offsetof(struct iphdr, id),
		      (uint16_t)(get16(ip + offsetof(struct iphdr, id)) + i));
		put16(ip + offsetof(struct iphdr, check), 0);
		put16(ip + offsetof(struct iphdr, check), csum_fold(csum_add(0, ip, ihl)));
	}
	memcpy(&seq, tcp + offsetof(struct tcphdr, seq), sizeof(seq));
	seq = htonl(ntohl(seq) + i * (uint32_t)mss);
	memcpy(tcp + offsetof(struct tcphdr, seq), &seq, sizeof(seq));
	if (i + 1 < segs)
		tcp[TCP_FLAGS_OFFSET] &= (uint8_t)~(TCP_FLAG_FIN | TCP_FLAG_PSH);
	if (i)
		tcp[TCP_FLAGS_OFFSET] &= (uint8_t)~TCP_FLAG_CWR;
	tcp_checksum(f, fi, tcp_len);
}

/* ---- one direction ---- */

/* The record's departure time and place in the queue, or a queue drop. */
static void enqueue(struct direction *d, struct record *rec, uint64_t arrival)
{
	if (!ring_fits(&d->ring, rec->off + rec->len)) {
		d->cnt.queue_drop++;
		return;
	}
	rec->due_ns = shaper_departure(&d->shaper, arrival, rec->wire_bytes) + d->delay_ns;
	ring_commit(&d->ring, rec);
}

/* Draws each segment's fate; returns how many are lost. */
static uint32_t draw_losses(struct direction *d, uint32_t segs)
{
	uint32_t i, lost = 0;

	memset(d->lost_map, 0, (segs + BITS_PER_WORD - 1) / BITS_PER_WORD * sizeof(uint64_t));
	for (i = 0; i < segs; i++) {
		if (rng_chance(&d->rng, d->loss)) {
			d->lost_map[i / BITS_PER_WORD] |= 1ULL << (i % BITS_PER_WORD);
			lost++;
		}
	}
	return lost;
}

static bool seg_lost(const struct direction *d, uint32_t i)
{
	return d->lost_map[i / BITS_PER_WORD] >> (i % BITS_PER_WORD) & 1;
}

/* Queues the surviving segments of a TCP super-frame (now in scratch), each
 * a plain frame with a full checksum and no offload left to do. */
static void enqueue_survivors(struct direction *d, size_t frame_len, size_t mss, uint32_t segs,
			      const struct frame_info *fi, uint64_t arrival)
{
	const uint8_t *src = d->scratch + VNET_HLEN;
	size_t total = frame_len - fi->hlen;
	uint32_t i;

	for (i = 0; i < segs; i++) {
		size_t off = (size_t)i * mss;
		size_t payload = total - off < mss ? total - off : mss;
		struct record *rec;
		uint8_t *f;

		if (seg_lost(d, i))
			continue;
		rec = ring_reserve(&d->ring);
		rec->off = 0;
		memset(rec->data, 0, VNET_HLEN); /* no GSO, no checksum offload */
		f = rec->data + VNET_HLEN;
		memcpy(f, src, fi->hlen);
		memcpy(f + fi->hlen, src + fi->hlen + off, payload);
		fix_segment_headers(f, fi, i, segs, mss, payload);
		rec->len = (uint32_t)(VNET_HLEN + fi->hlen + payload);
		rec->segs = 1;
		rec->wire_bytes = (uint32_t)(fi->hlen + payload);
		enqueue(d, rec, arrival);
	}
}

/* A frame received into the ring's tail: loss, then queue. */
static void admit(struct direction *d, struct record *rec, uint64_t arrival)
{
	const uint8_t *vnet = rec->data + rec->off;
	const struct virtio_net_hdr *vh = (const struct virtio_net_hdr *)vnet;
	const uint8_t *f = vnet + VNET_HLEN;
	size_t len = rec->len - VNET_HLEN;
	size_t hlen = 0;
	uint32_t segs = 1, lost;
	struct frame_info fi;
	bool parsed = false;

	if (is_gso(vh)) {
		parsed = parse_l4(f, len, &fi);
		hlen = parsed ? fi.hlen : (vh->hdr_len < len ? vh->hdr_len : 0);
		segs = gso_segments(len, hlen, vh);
	}
	rec->segs = segs;
	rec->wire_bytes = (uint32_t)(len + (size_t)(segs - 1) * hlen);
	if (d->loss <= 0) {
		enqueue(d, rec, arrival);
		return;
	}
	lost = draw_losses(d, segs);
	if (!lost) {
		enqueue(d, rec, arrival);
		return;
	}
	if (lost < segs && parsed && fi.tcp) {
		d->cnt.lost += lost;
		memcpy(d->scratch, vnet, rec->len);
		enqueue_survivors(d, len, vh->gso_size, segs, &fi, arrival);
		return;
	}
	d->cnt.lost += segs; /* all lost, or not TCP: the whole frame goes */
}

/* The kernel hands a VLAN tag apart (PACKET_AUXDATA); put it back after
 * the MAC addresses, moving the virtio header and the MACs into the
 * VLAN_HLEN bytes left free in front of them. */
static void restore_vlan(struct record *rec, const struct tpacket_auxdata *aux)
{
	size_t moved = VNET_HLEN + ETH_ALEN * 2;
	struct virtio_net_hdr *vh;
	uint8_t *tag;
	uint16_t tpid;

	if (!aux || !(aux->tp_status & TP_STATUS_VLAN_VALID) || rec->off < VLAN_HLEN)
		return;
	tpid = aux->tp_status & TP_STATUS_VLAN_TPID_VALID ? aux->tp_vlan_tpid : ETH_P_8021Q;
	rec->off -= VLAN_HLEN;
	memmove(rec->data + rec->off, rec->data + rec->off + VLAN_HLEN, moved);
	tag = rec->data + rec->off + moved;
	put16(tag, tpid);
	put16(tag + sizeof(uint16_t), aux->tp_vlan_tci);
	rec->len += VLAN_HLEN;
	vh = (struct virtio_net_hdr *)(rec->data + rec->off);
	if (vh->flags & VIRTIO_NET_HDR_F_NEEDS_CSUM)
		vh->csum_start += VLAN_HLEN;
	if (vh->hdr_len)
		vh->hdr_len += VLAN_HLEN;
}

/* The two clocks read together: the kernel stamps frames on CLOCK_REALTIME,
 * the line keeps time on CLOCK_MONOTONIC. */
struct clock_pair {
	uint64_t mono_ns;
	uint64_t real_ns;
};

static void clock_pair_now(struct clock_pair *c)
{
	struct timespec ts;

	c->mono_ns = now_ns();
	clock_gettime(CLOCK_REALTIME, &ts);
	c->real_ns = (uint64_t)ts.tv_sec * NSEC_PER_SEC + (uint64_t)ts.tv_nsec;
}

/* When the kernel took the frame in (SO_TIMESTAMPNS), on the monotonic
 * clock: the time the thread took to wake up and read it is part of the
 * delay, not added to it. c was read before the frame; a frame that came
 * in since has it read again. A stamp from the future or from long ago (the
 * real-time clock was set meanwhile) counts as now. */
static uint64_t arrival_ns(struct clock_pair *c, const struct timespec *stamp)
{
	uint64_t real, age;

	if (!stamp)
		return now_ns();
	real = (uint64_t)stamp->tv_sec * NSEC_PER_SEC + (uint64_t)stamp->tv_nsec;
	if (real > c->real_ns)
		clock_pair_now(c);
	if (real > c->real_ns)
		return c->mono_ns;
	age = c->real_ns - real;
	return age <= STAMP_AGE_MAX_NS ? c->mono_ns - age : c->mono_ns;
}

/* Reads up to RX_BATCH frames. 0 when the socket is empty, -errno on error. */
static int receive_batch(struct direction *d)
{
	union {
		struct cmsghdr hdr;
		uint8_t buf[CMSG_SPACE(sizeof(struct tpacket_auxdata)) +
			    CMSG_SPACE(sizeof(struct timespec))];
	} control;
	struct clock_pair clocks;
	int i;

	clock_pair_now(&clocks);

	for (i = 0; i < RX_BATCH; i++) {
		struct record *rec = ring_reserve(&d->ring);
		struct iovec iov = {
			.iov_base = rec->data + VLAN_HLEN,
			.iov_len = VNET_HLEN + FRAME_MAX,
		};
		struct msghdr msg = {
			.msg_iov = &iov,
			.msg_iovlen = 1,
			.msg_control = &control,
			.msg_controllen = sizeof(control),
		};
		const struct tpacket_auxdata *aux = NULL;
		const struct timespec *stamp = NULL;
		struct cmsghdr *c;
		ssize_t n;

		n = recvmsg(d->rx_fd, &msg, MSG_DONTWAIT | MSG_TRUNC);
		if (n < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return 0;
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if ((size_t)n > iov.iov_len || (msg.msg_flags & MSG_TRUNC)) {
			d->cnt.truncated++;
			continue;
		}
		if ((size_t)n < VNET_HLEN + ETH_HLEN)
			continue; /* nothing to forward */
		for (c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
			if (c->cmsg_level == SOL_PACKET && c->cmsg_type == PACKET_AUXDATA)
				aux = (const struct tpacket_auxdata *)CMSG_DATA(c);
			if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS)
				stamp = (const struct timespec *)CMSG_DATA(c);
		}
		rec->off = VLAN_HLEN;
		rec->len = (uint32_t)n;
		restore_vlan(rec, aux);
		admit(d, rec, arrival_ns(&clocks, stamp));
	}
	return 0;
}

/* Sends what is due, up to TX_BATCH frames. */
static void transmit_due(struct direction *d, uint64_t now)
{
	struct record *rec;
	int sent = 0;

	while (sent < TX_BATCH && (rec = ring_head(&d->ring)) && rec->due_ns <= now) {
		uint64_t late = now_ns() - rec->due_ns;
		ssize_t n;

		do {
			n = send(d->tx_fd, rec->data + rec->off, rec->len, 0);
		} while (n < 0 && errno == EINTR);
		if (n == (ssize_t)rec->len) {
			d->cnt.late_ns += late;
			d->cnt.late_max_ns = max_u64(d->cnt.late_max_ns, late);
			d->cnt.frames++;
			d->cnt.packets += rec->segs;
			d->cnt.bytes += rec->wire_bytes;
		} else {
			d->cnt.send_fail++; /* ENOBUFS from a full veth, or the peer gone */
		}
		ring_pop(&d->ring, rec);
		sent++;
	}
}

/* The error a socket reports (ENETDOWN: its interface went away). */
static int socket_error(int fd)
{
	int err = 0;
	socklen_t len = sizeof(err);

	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		return errno;
	return err ? err : EIO;
}

/* The earliest departure among a worker's directions. */
static const struct timespec *next_wakeup(struct direction *const *dirs, int n, uint64_t now,
					  struct timespec *ts)
{
	uint64_t due = UINT64_MAX, wait;
	int i;

	for (i = 0; i < n; i++) {
		struct record *rec = ring_head(&dirs[i]->ring);

		if (rec && rec->due_ns < due)
			due = rec->due_ns;
	}
	if (due == UINT64_MAX)
		return NULL;
	wait = due > now ? due - now : 0;
	ts->tv_sec = (time_t)(wait / NSEC_PER_SEC);
	ts->tv_nsec = (long)(wait % NSEC_PER_SEC);
	return ts;
}

/* SCHED_FIFO at the lowest priority: a wake-up takes the CPU from ordinary
 * tasks at once, so frames leave on time on a busy machine (on a loaded
 * 2-core box: 40 us late on average instead of 8 ms under a bulk flow). The
 * threads sleep between frames, so they do not starve the others; the
 * kernel's RT throttling is the backstop. Without the privilege: a warning. */
static void set_realtime(void)
{
	struct sched_param sp = { .sched_priority = RT_PRIORITY };
	int err = pthread_setschedparam(pthread_self(), SCHED_FIFO, &sp);

	if (err)
		fprintf(stderr, "delayline: SCHED_FIFO: %s; frames may leave late on a busy CPU\n",
			strerror(err));
}

/* One thread: serves its directions until the stop eventfd fires. */
static void *worker_run(void *arg)
{
	struct worker *w = arg;
	struct pollfd fds[DIRECTIONS + 1];
	int i, rc, nfds = w->n + 1;

	for (i = 0; i < w->n; i++)
		fds[i] = (struct pollfd){ .fd = w->dirs[i]->rx_fd, .events = POLLIN };
	fds[w->n] = (struct pollfd){ .fd = w->stop_fd, .events = POLLIN };
	/* The default 50 us slack would be the line's jitter. */
	if (prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL) < 0) {
		w->error = errno;
		return NULL;
	}
	if (w->realtime)
		set_realtime();
	while (!w->error) {
		struct timespec ts;
		uint64_t now = now_ns();

		for (i = 0; i < w->n; i++)
			transmit_due(w->dirs[i], now);
		rc = ppoll(fds, (nfds_t)nfds, next_wakeup(w->dirs, w->n, now_ns(), &ts), NULL);
		if (rc < 0) {
			if (errno != EINTR)
				w->error = errno;
			continue;
		}
		if (fds[w->n].revents)
			break;
		for (i = 0; i < w->n && !w->error; i++) {
			if (fds[i].revents & (POLLERR | POLLNVAL))
				w->error = socket_error(fds[i].fd);
			else if (fds[i].revents & POLLIN)
				w->error = -receive_batch(w->dirs[i]);
		}
	}
	for (i = 0; i < w->n; i++)
		w->dirs[i]->cnt.left = w->dirs[i]->ring.frames;
	return NULL;
}

/* ---- sockets ---- */

static int set_int(int fd, int level, int name, int value)
{
	return setsockopt(fd, level, name, &value, sizeof(value)) < 0 ? -errno : 0;
}

/* A packet socket on ifname with virtio headers: a receiving one sees the
 * interface's incoming frames (ETH_P_ALL, its own sends ignored); a sending
 * one (protocol 0) receives nothing. Protocol 0 until bound, so no frame
 * from another interface slips in before the bind. */
static int packet_socket(const char *ifname, bool receive)
{
	struct sockaddr_ll sll = { .sll_family = AF_PACKET };
	struct packet_mreq mreq = { .mr_type = PACKET_MR_PROMISC };
	unsigned int ifindex = if_nametoindex(ifname);
	int fd, err;

	if (!ifindex)
		return -errno;
	fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	err = set_int(fd, SOL_PACKET, PACKET_VNET_HDR, 1);
	if (!err && receive)
		err = set_int(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, 1);
	if (!err && receive)
		err = set_int(fd, SOL_PACKET, PACKET_AUXDATA, 1);
	if (!err && receive)
		err = set_int(fd, SOL_SOCKET, SO_TIMESTAMPNS, 1);
	if (!err)
		err = set_int(fd, SOL_SOCKET, receive ? SO_RCVBUFFORCE : SO_SNDBUFFORCE,
			      SOCKET_BUFFER_BYTES);
	if (err)
		goto fail;
	sll.sll_ifindex = (int)ifindex;
	sll.sll_protocol = receive ? htons(ETH_P_ALL) : 0;
	if (bind(fd, (struct sockaddr *)&sll, sizeof(sll)) < 0) {
		err = -errno;
		goto fail;
	}
	/* A bridge takes every frame, whatever its destination MAC. */
	mreq.mr_ifindex = (int)ifindex;
	if (receive &&
	    setsockopt(fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mreq, sizeof(mreq)) < 0) {
		err = -errno;
		goto fail;
	}
	return fd;
fail:
	close(fd);
	return err;
}

/* ---- options ---- */

struct side_opts {
	double delay_ms;
	uint64_t rate_bps;
	double loss;
	uint64_t queue_bytes;
	uint64_t burst_bytes;
};

struct opts {
	const char *a;
	const char *b;
	struct side_opts ab;
	struct side_opts ba;
	uint64_t seed;
	bool seeded;
	bool one_thread;
	bool no_realtime;
};

enum opt_id {
	OPT_A = 256,
	OPT_B,
	OPT_DELAY,
	OPT_DELAY_AB,
	OPT_DELAY_BA,
	OPT_RATE,
	OPT_RATE_AB,
	OPT_RATE_BA,
	OPT_LOSS,
	OPT_LOSS_AB,
	OPT_LOSS_BA,
	OPT_QUEUE,
	OPT_QUEUE_AB,
	OPT_QUEUE_BA,
	OPT_BURST,
	OPT_BURST_AB,
	OPT_BURST_BA,
	OPT_SEED,
	OPT_ONE_THREAD,
	OPT_NO_REALTIME,
	OPT_HELP,
};

static const struct option long_opts[] = {
	{ "a", required_argument, NULL, OPT_A },
	{ "b", required_argument, NULL, OPT_B },
	{ "delay", required_argument, NULL, OPT_DELAY },
	{ "delay-ab", required_argument, NULL, OPT_DELAY_AB },
	{ "delay-ba", required_argument, NULL, OPT_DELAY_BA },
	{ "rate", required_argument, NULL, OPT_RATE },
	{ "rate-ab", required_argument, NULL, OPT_RATE_AB },
	{ "rate-ba", required_argument, NULL, OPT_RATE_BA },
	{ "loss", required_argument, NULL, OPT_LOSS },
	{ "loss-ab", required_argument, NULL, OPT_LOSS_AB },
	{ "loss-ba", required_argument, NULL, OPT_LOSS_BA },
	{ "queue", required_argument, NULL, OPT_QUEUE },
	{ "queue-ab", required_argument, NULL, OPT_QUEUE_AB },
	{ "queue-ba", required_argument, NULL, OPT_QUEUE_BA },
	{ "burst", required_argument, NULL, OPT_BURST },
	{ "burst-ab", required_argument, NULL, OPT_BURST_AB },
	{ "burst-ba", required_argument, NULL, OPT_BURST_BA },
	{ "seed", required_argument, NULL, OPT_SEED },
	{ "one-thread", no_argument, NULL, OPT_ONE_THREAD },
	{ "no-realtime", no_argument, NULL, OPT_NO_REALTIME },
	{ "help", no_argument, NULL, OPT_HELP },
	{ NULL, 0, NULL, 0 },
};

static void usage(FILE *out)
{
	fprintf(out,
		"usage: delayline --a IF --b IF [--delay MS | --delay-ab MS --delay-ba MS]\n"
		"                 [--rate[-ab|-ba] BITS/S] [--burst[-ab|-ba] BYTES]\n"
		"                 [--loss[-ab|-ba] P] [--queue[-ab|-ba] BYTES] [--seed N]\n"
		"                 [--one-thread] [--no-realtime]\n"
		"Rates take k, M, G (powers of 1000), sizes k, M, G (powers of 1024).\n"
		"Default queue %llu bytes (1 Gbit/s for 200 ms), burst one largest frame.\n",
		(unsigned long long)DEFAULT_QUEUE_BYTES);
}

/* A number with an optional k/M/G suffix, powers of base. */
static int parse_scaled(const char *s, uint64_t base, uint64_t *out)
{
	char *end;
	double v, mult = 1;

	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s || v < 0)
		return -EINVAL;
	switch (*end) {
	case 'G': case 'g': mult *= (double)base; /* fall through */
	case 'M': case 'm': mult *= (double)base; /* fall through */
	case 'k': case 'K': mult *= (double)base; end++; break;
	case '\0': break;
	default: return -EINVAL;
	}
	if (*end)
		return -EINVAL;
	*out = (uint64_t)(v * mult);
	return 0;
}

static int parse_u64(const char *s, uint64_t *out)
{
	char *end;

	errno = 0;
	*out = strtoull(s, &end, 0);
	return errno || end == s || *end ? -EINVAL : 0;
}

static int parse_double(const char *s, double lo, double hi, double *out)
{
	char *end;

	errno = 0;
	*out = strtod(s, &end);
	return errno || end == s || *end || *out < lo || *out > hi ? -EINVAL : 0;
}

#define RATE_BASE 1000
#define SIZE_BASE 1024
#define DELAY_MS_MAX 3600000.0

static int parse_opt(struct opts *o, int id, const char *arg)
{
	struct side_opts *sides[2];
	int n = 0, i, err = 0;

	switch (id) {
	case OPT_A: o->a = arg; return 0;
	case OPT_B: o->b = arg; return 0;
	case OPT_SEED:
		o->seeded = true;
		return parse_u64(arg, &o->seed);
	default: break;
	}
	if (id == OPT_DELAY_AB || id == OPT_RATE_AB || id == OPT_LOSS_AB || id == OPT_QUEUE_AB ||
	    id == OPT_BURST_AB || id == OPT_DELAY || id == OPT_RATE || id == OPT_LOSS ||
	    id == OPT_QUEUE || id == OPT_BURST)
		sides[n++] = &o->ab;
	if (id == OPT_DELAY_BA || id == OPT_RATE_BA || id == OPT_LOSS_BA || id == OPT_QUEUE_BA ||
	    id == OPT_BURST_BA || id == OPT_DELAY || id == OPT_RATE || id == OPT_LOSS ||
	    id == OPT_QUEUE || id == OPT_BURST)
		sides[n++] = &o->ba;
	if (!n)
		return -EINVAL;
	for (i = 0; i < n && !err; i++) {
		struct side_opts *s = sides[i];

		switch (id) {
		case OPT_DELAY: case OPT_DELAY_AB: case OPT_DELAY_BA:
			err = parse_double(arg, 0, DELAY_MS_MAX, &s->delay_ms);
			break;
		case OPT_RATE: case OPT_RATE_AB: case OPT_RATE_BA:
			err = parse_scaled(arg, RATE_BASE, &s->rate_bps);
			break;
		case OPT_LOSS: case OPT_LOSS_AB: case OPT_LOSS_BA:
			err = parse_double(arg, 0, 1, &s->loss);
			break;
		case OPT_QUEUE: case OPT_QUEUE_AB: case OPT_QUEUE_BA:
			err = parse_scaled(arg, SIZE_BASE, &s->queue_bytes);
			if (!err && s->queue_bytes < REC_MAX)
				err = -EINVAL;
			break;
		default: /* burst */
			err = parse_scaled(arg, SIZE_BASE, &s->burst_bytes);
			break;
		}
	}
	return err;
}

static const char *opt_name(int id)
{
	const struct option *o;

	for (o = long_opts; o->name; o++)
		if (o->val == id)
			return o->name;
	return "?";
}

static int parse_args(int argc, char **argv, struct opts *o)
{
	int id;

	memset(o, 0, sizeof(*o));
	o->ab.queue_bytes = o->ba.queue_bytes = DEFAULT_QUEUE_BYTES;
	o->ab.burst_bytes = o->ba.burst_bytes = FRAME_MAX;
	while ((id = getopt_long(argc, argv, "", long_opts, NULL)) != -1) {
		if (id == OPT_HELP) {
			usage(stdout);
			exit(0);
		}
		if (id == OPT_ONE_THREAD || id == OPT_NO_REALTIME) {
			o->one_thread |= id == OPT_ONE_THREAD;
			o->no_realtime |= id == OPT_NO_REALTIME;
			continue;
		}
		if (id == '?' || parse_opt(o, id, optarg) < 0) {
			if (id != '?')
				fprintf(stderr, "delayline: bad value for --%s: %s\n",
					opt_name(id), optarg);
			usage(stderr);
			return -EINVAL;
		}
	}
	if (!o->a || !o->b || optind != argc) {
		usage(stderr);
		return -EINVAL;
	}
	return 0;
}

/* ---- main ---- */

static void print_counters(const struct direction *d)
{
	const struct counters *c = &d->cnt;

	fprintf(stderr,
		"delayline %s forwarded=%" PRIu64 " packets=%" PRIu64 " bytes=%" PRIu64
		" lost=%" PRIu64 " queue_drop=%" PRIu64 " send_fail=%" PRIu64
		" truncated=%" PRIu64 " rx_drop=%" PRIu64 " left=%" PRIu64 " late_avg_us=%" PRIu64
		" late_max_us=%" PRIu64 "\n",
		d->name, c->frames, c->packets, c->bytes, c->lost, c->queue_drop, c->send_fail,
		c->truncated, c->rx_drop, c->left,
		(uint64_t)(c->frames ? c->late_ns / c->frames / NSEC_PER_USEC : 0),
		(uint64_t)(c->late_max_ns / NSEC_PER_USEC));
}

/* Frames the kernel dropped for want of room in the socket's buffer. */
static uint64_t socket_drops(int fd)
{
	struct tpacket_stats st;
	socklen_t len = sizeof(st);

	if (getsockopt(fd, SOL_PACKET, PACKET_STATISTICS, &st, &len) < 0)
		return 0;
	return st.tp_drops;
}

static int direction_init(struct direction *d, const char *name, const struct side_opts *s,
			  int rx_fd, int tx_fd, uint64_t seed)
{
	memset(d, 0, sizeof(*d));
	d->name = name;
	d->rx_fd = rx_fd;
	d->tx_fd = tx_fd;
	d->delay_ns = (uint64_t)(s->delay_ms * (double)NSEC_PER_MSEC);
	d->loss = s->loss;
	d->shaper.rate_bps = s->rate_bps;
	d->shaper.burst_bytes = s->burst_bytes;
	d->rng = seed;
	d->scratch = malloc(VNET_HLEN + FRAME_MAX);
	if (!d->scratch)
		return -ENOMEM;
	return ring_init(&d->ring, s->queue_bytes);
}

static void direction_free(struct direction *d)
{
	ring_free(&d->ring);
	free(d->scratch);
}

int main(int argc, char **argv)
{
	struct direction dirs[DIRECTIONS];
	struct worker workers[DIRECTIONS];
	int fds[2 * DIRECTIONS] = { -1, -1, -1, -1 }; /* rx a, rx b, tx a, tx b */
	const char *ifs[DIRECTIONS];
	struct opts o;
	sigset_t stop_signals;
	int stop_fd = -1, sig, i, err, nworkers, started = 0, rc = 1;
	uint64_t one = 1;

	memset(dirs, 0, sizeof(dirs));
	memset(workers, 0, sizeof(workers));
	if (parse_args(argc, argv, &o) < 0)
		return 2;
	if (!o.seeded && getrandom(&o.seed, sizeof(o.seed), 0) != sizeof(o.seed)) {
		perror("delayline: getrandom");
		return 1;
	}
	/* Signals go to the main thread's sigwait, never to the workers. */
	sigemptyset(&stop_signals);
	sigaddset(&stop_signals, SIGTERM);
	sigaddset(&stop_signals, SIGINT);
	err = pthread_sigmask(SIG_BLOCK, &stop_signals, NULL);
	if (err) {
		fprintf(stderr, "delayline: pthread_sigmask: %s\n", strerror(err));
		return 1;
	}
	ifs[0] = o.a;
	ifs[1] = o.b;
	for (i = 0; i < 2 * DIRECTIONS; i++) {
		fds[i] = packet_socket(ifs[i % DIRECTIONS], i < DIRECTIONS);
		if (fds[i] < 0) {
			fprintf(stderr, "delayline: %s: %s\n", ifs[i % DIRECTIONS], strerror(-fds[i]));
			goto out;
		}
	}
	stop_fd = eventfd(0, EFD_CLOEXEC);
	if (stop_fd < 0) {
		perror("delayline: eventfd");
		goto out;
	}
	err = direction_init(&dirs[0], "ab", &o.ab, fds[0], fds[3], o.seed);
	if (!err)
		err = direction_init(&dirs[1], "ba", &o.ba, fds[1], fds[2], rng_next(&o.seed));
	if (err) {
		fprintf(stderr, "delayline: %s\n", strerror(-err));
		goto out;
	}
	nworkers = o.one_thread ? 1 : DIRECTIONS;
	for (i = 0; i < DIRECTIONS; i++) {
		struct worker *w = &workers[o.one_thread ? 0 : i];

		w->dirs[w->n++] = &dirs[i];
		w->stop_fd = stop_fd;
		w->realtime = !o.no_realtime;
	}
	for (; started < nworkers; started++) {
		err = pthread_create(&workers[started].thread, NULL, worker_run, &workers[started]);
		if (err) {
			fprintf(stderr, "delayline: pthread_create: %s\n", strerror(err));
			goto stop;
		}
	}
	printf("ready\n");
	fflush(stdout);
	err = sigwait(&stop_signals, &sig);
	if (err) {
		fprintf(stderr, "delayline: sigwait: %s\n", strerror(err));
		goto stop;
	}
	rc = 0;
stop:
	if (write(stop_fd, &one, sizeof(one)) != sizeof(one))
		perror("delayline: eventfd write");
	for (i = 0; i < started; i++) {
		pthread_join(workers[i].thread, NULL);
		if (workers[i].error) {
			fprintf(stderr, "delayline: %s\n", strerror(workers[i].error));
			rc = 1;
		}
	}
	for (i = 0; started && i < DIRECTIONS; i++) {
		dirs[i].cnt.rx_drop = socket_drops(dirs[i].rx_fd);
		print_counters(&dirs[i]);
	}
out:
	for (i = 0; i < DIRECTIONS; i++)
		direction_free(&dirs[i]);
	for (i = 0; i < 2 * DIRECTIONS; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	if (stop_fd >= 0)
		close(stop_fd);
	return rc;
}
