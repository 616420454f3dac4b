/* The delay line's compiled core: the same NFQUEUE delay line as delayline.py, without
 * Python's per-packet cost (which took a third of a core at 50k packets/s and made the
 * release loop late under load).
 *
 *   delayline-core --control PATH --seed N --queue NUM:DELAY_US:JITTER_US:LOSS_PPM:MAXLEN[:REORDER_PPM] ...
 *
 * Prints "ready" once every queue is bound. A datagram "stats" on the control socket is
 * answered with the counters as JSON ("stats reset" also restarts the window maximum;
 * "since=NS" adds each queue's late and drop windows that ended at or after NS, wall-clock
 * nanoseconds). "set NUM:DELAY_US:JITTER_US:LOSS_PPM ..." changes queues at once (a WAN fault
 * starting or healing) and is answered with the wall-clock ns it took effect; packets already
 * queued keep their release times. SIGTERM or SIGINT ends it. Built on first use by pytest_overlay.emulator with cc.
 *
 * Windows: late releases (and kernel queue drops) come in bursts, when this process or its
 * vCPU is descheduled. Each burst is kept as one window [first due, last release] in wall
 * time, so a probe's samples can be matched to the moments the emulator was off its mark.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <linux/netlink.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAX_QUEUES 4096
#define SOCKET_BUFFER (64 << 20)
#define LATE_LIMIT_NS 1000000LL
#define MAX_SPIN_NS 300000LL
#define SPIN_MAX_PENDING 256
#define LOADED_MIN_SLEEP_NS 50000LL
#define HIST_BUCKETS 20
#define MAX_WINDOWS 2048              /* per queue, a ring: the newest are kept (a fault scenario runs minutes) */
#define MERGE_GAP_NS 2000000LL        /* late releases this close make one window */
#define DROP_POLL_NS 20000000LL       /* how often the kernel's queue drops are read */
#define WIRE_MTU 1500                 /* a GSO packet's length over this is how many packets it stands for */

/* Upper edges of the release-error histogram, in microseconds; the last bucket is open. */
static const long hist_edges_us[HIST_BUCKETS - 1] = {
    25, 50, 100, 150, 200, 300, 400, 500, 700, 1000, 1500, 2000, 3000, 5000, 7000,
    10000, 20000, 50000, 100000};

struct slot { int64_t due; uint32_t id; };

/* One burst of trouble on a queue, in wall-clock ns: packets released over the limit late,
 * or dropped by the kernel (queue or socket full) between two polls. */
struct window { int64_t start, end, max_late; uint32_t late, dropped; };

struct queue {
    uint16_t num;
    int64_t delay, jitter;
    uint32_t loss_ppm, reorder_ppm, cap;
    struct slot *ring;
    uint32_t head, len;
    int64_t last_due;
    uint64_t queued, released, lost, reordered, late, hist[HIST_BUCKETS];
    int64_t max_late, window_max_late, total_late;
    struct window windows[MAX_WINDOWS];
    uint32_t whead, wlen;
    int64_t overwritten_end; /* end of the newest window the ring let go */
    unsigned long long kernel_dropped, kernel_user_dropped;
};

static struct queue queues[MAX_QUEUES];
static int16_t queue_of[65536]; /* queue number -> index in queues + 1 (0: none): one lookup per packet */
static int nqueues, nl;
static uint32_t seq;
static int64_t wall_offset, wake_lag, last_drop_poll, drop_poll_cost;
static uint64_t enobufs, stamped, rng_state = 1;
static volatile sig_atomic_t stopping;

static int64_t now_ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static double rnd(void) { /* xorshift64*: reproducible from the seed, like delayline.py's */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (double)((rng_state * 2685821657736338717ULL) >> 11) / 9007199254740992.0;
}

static struct queue *find_queue(uint16_t num) {
    return queue_of[num] ? &queues[queue_of[num] - 1] : NULL;
}

static size_t put_attr(char *buf, size_t off, uint16_t type, const void *data, uint16_t len) {
    struct nlattr *a = (struct nlattr *)(buf + off);
    a->nla_len = NLA_HDRLEN + len;
    a->nla_type = type;
    memcpy(buf + off + NLA_HDRLEN, data, len);
    return off + NLA_ALIGN(a->nla_len);
}

static size_t start_msg(char *buf, uint8_t type, uint16_t res_id, uint16_t flags) {
    struct nlmsghdr *h = (struct nlmsghdr *)buf;
    struct nfgenmsg *g = (struct nfgenmsg *)NLMSG_DATA(h);
    memset(buf, 0, NLMSG_HDRLEN + sizeof(*g));
    h->nlmsg_type = (NFNL_SUBSYS_QUEUE << 8) | type;
    h->nlmsg_flags = NLM_F_REQUEST | flags;
    h->nlmsg_seq = ++seq;
    g->nfgen_family = AF_UNSPEC;
    g->version = NFNETLINK_V0;
    g->res_id = htons(res_id);
    return NLMSG_HDRLEN + NLMSG_ALIGN(sizeof(*g));
}

static int send_msg(char *buf, size_t len) {
    ((struct nlmsghdr *)buf)->nlmsg_len = len;
    return send(nl, buf, len, 0) < 0 ? -1 : 0;
}

static void config(uint16_t num, char *attrs, size_t attrs_len) {
    char buf[256], reply[4096];
    size_t off = start_msg(buf, NFQNL_MSG_CONFIG, num, NLM_F_ACK);
    memcpy(buf + off, attrs, attrs_len);
    if (send_msg(buf, off + attrs_len) < 0) { perror("netlink send"); exit(1); }
    for (;;) {
        ssize_t n = recv(nl, reply, sizeof reply, 0);
        if (n < 0) { perror("netlink recv"); exit(1); }
        struct nlmsghdr *h = (struct nlmsghdr *)reply;
        if (h->nlmsg_type == NLMSG_ERROR && h->nlmsg_seq == seq) {
            int code = ((struct nlmsgerr *)NLMSG_DATA(h))->error;
            if (code) {
                fprintf(stderr, "NFQUEUE config of queue %u: %s\n", num, strerror(-code));
                exit(1);
            }
            return;
        }
    }
}

static void bind_queues(void) {
    for (int i = 0; i < nqueues; i++) {
        char attrs[128];
        struct nfqnl_msg_config_cmd cmd = {.command = NFQNL_CFG_CMD_BIND, .pf = 0};
        config(queues[i].num, attrs, put_attr(attrs, 0, NFQA_CFG_CMD, &cmd, sizeof cmd));
        /* One byte of payload, not metadata only: only then does the kernel say the packet's
         * length (NFQA_CAP_LEN), which tells a GSO burst from one packet. */
        struct nfqnl_msg_config_params params = {.copy_range = htonl(1), .copy_mode = NFQNL_COPY_PACKET};
        uint32_t maxlen = htonl(queues[i].cap), gso = htonl(NFQA_CFG_F_GSO);
        size_t off = put_attr(attrs, 0, NFQA_CFG_PARAMS, &params, sizeof params);
        off = put_attr(attrs, off, NFQA_CFG_QUEUE_MAXLEN, &maxlen, 4);
        off = put_attr(attrs, off, NFQA_CFG_MASK, &gso, 4);
        off = put_attr(attrs, off, NFQA_CFG_FLAGS, &gso, 4);
        config(queues[i].num, attrs, off);
    }
}

static void verdict(uint8_t type, uint16_t num, uint32_t v, uint32_t id) {
    char buf[64];
    struct nfqnl_msg_verdict_hdr hdr = {.verdict = htonl(v), .id = htonl(id)};
    size_t off = start_msg(buf, type, num, 0);
    send_msg(buf, put_attr(buf, off, NFQA_VERDICT_HDR, &hdr, sizeof hdr));
}

/* Take up to budget queued packets off the socket and schedule them. */
static void receive(int64_t now, int budget) {
    char buf[512];
    wall_offset = now_ns(CLOCK_REALTIME) - now_ns(CLOCK_MONOTONIC);
    while (budget-- > 0) {
        ssize_t n = recv(nl, buf, sizeof buf, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == ENOBUFS) { enobufs++; continue; }
            return;
        }
        struct nlmsghdr *h = (struct nlmsghdr *)buf;
        if (n < 28 || (h->nlmsg_type & 0xff) != NFQNL_MSG_PACKET || (h->nlmsg_type >> 8) != NFNL_SUBSYS_QUEUE)
            continue;
        struct nfgenmsg *g = NLMSG_DATA(h);
        struct queue *q = find_queue(ntohs(g->res_id));
        if (!q) continue;
        uint32_t id = 0, segments = 1;
        int have_id = 0;
        int64_t arrival = now;
        size_t off = NLMSG_HDRLEN + NLMSG_ALIGN(sizeof *g);
        while (off + NLA_HDRLEN <= (size_t)n) {
            struct nlattr *a = (struct nlattr *)(buf + off);
            if (a->nla_len < NLA_HDRLEN) break;
            int type = a->nla_type & NLA_TYPE_MASK;
            if (type == NFQA_PACKET_HDR && a->nla_len >= NLA_HDRLEN + 4) {
                id = ntohl(((struct nfqnl_msg_packet_hdr *)((char *)a + NLA_HDRLEN))->packet_id);
                have_id = 1;
            } else if (type == NFQA_CAP_LEN && a->nla_len >= NLA_HDRLEN + 4) {
                uint32_t len = ntohl(*(uint32_t *)((char *)a + NLA_HDRLEN));
                segments = len > WIRE_MTU ? (len + WIRE_MTU - 1) / WIRE_MTU : 1;
            } else if (type == NFQA_TIMESTAMP && a->nla_len >= NLA_HDRLEN + 16) {
                struct nfqnl_msg_packet_timestamp *t = (void *)((char *)a + NLA_HDRLEN);
                uint64_t sec = be64toh(t->sec), usec = be64toh(t->usec);
                if (sec) {
                    stamped++;
                    arrival = (int64_t)sec * 1000000000LL + (int64_t)usec * 1000 - wall_offset;
                }
            }
            off += NLA_ALIGN(a->nla_len);
        }
        if (!have_id) continue;
        q->queued++;
        /* Loss is per wire packet: a GSO burst of n goes whole with the chance that any of its
         * n would have, as TCP then sees one loss event either way. */
        double keep = 1.0 - q->loss_ppm / 1e6, kept = 1.0;
        for (uint32_t k = 0; k < segments && k < 64; k++) kept *= keep;
        if (q->loss_ppm && rnd() < 1.0 - kept) {
            q->lost++;
            verdict(NFQNL_MSG_VERDICT, q->num, NF_DROP, id);
            continue;
        }
        /* Reordering as netem's: a packet picked is sent on at once, ahead of every packet the
         * link still holds; counted only where it did overtake one. */
        if (q->reorder_ppm && q->len && rnd() < q->reorder_ppm / 1e6) {
            q->reordered++;
            verdict(NFQNL_MSG_VERDICT, q->num, NF_ACCEPT, id);
            continue;
        }
        int64_t due = arrival + q->delay;
        if (q->jitter) due += (int64_t)((2 * rnd() - 1) * q->jitter);
        if (due < q->last_due) due = q->last_due; /* never reorder */
        q->last_due = due;
        if (q->len == q->cap) { /* the kernel's own maxlen holds no more; cannot happen */
            verdict(NFQNL_MSG_VERDICT, q->num, NF_ACCEPT, id);
            continue;
        }
        q->ring[(q->head + q->len++) % q->cap] = (struct slot){due, id};
    }
}

/* Add a stretch of trouble [start, end] (wall ns) to the queue's timeline, merged with the
 * newest window when they touch. */
static void note_window(struct queue *q, int64_t start, int64_t end, int64_t late, uint32_t dropped) {
    struct window *w = q->wlen ? &q->windows[(q->whead + q->wlen - 1) % MAX_WINDOWS] : NULL;
    if (!w || start > w->end + MERGE_GAP_NS) {
        if (q->wlen == MAX_WINDOWS) {
            q->overwritten_end = q->windows[q->whead].end;
            q->whead = (q->whead + 1) % MAX_WINDOWS;
            q->wlen--;
        }
        w = &q->windows[(q->whead + q->wlen++) % MAX_WINDOWS];
        *w = (struct window){start, end, 0, 0, 0};
    }
    if (start < w->start) w->start = start;
    if (end > w->end) w->end = end;
    if (late > w->max_late) w->max_late = late;
    if (late > LATE_LIMIT_NS) w->late++;
    w->dropped += dropped;
}

static void count_release(struct queue *q, int64_t late, int64_t due) {
    int b = 0;
    long us = (long)(late / 1000);
    while (b < HIST_BUCKETS - 1 && us >= hist_edges_us[b]) b++;
    q->hist[b]++;
    q->released++;
    q->total_late += late;
    if (late > q->max_late) q->max_late = late;
    if (late > q->window_max_late) q->window_max_late = late;
    if (late > LATE_LIMIT_NS) {
        q->late++;
        note_window(q, due + wall_offset, due + late + wall_offset, late, 0);
    }
}

/* Accept every packet due by now; return the next deadline (INT64_MAX if none). Lateness
 * counts from when the verdict syscall returned (the kernel forwards the batch inside it):
 * a stall between deciding and sending, or inside the syscall, must show. */
static int64_t release(int64_t now) {
    int64_t next = INT64_MAX;
    for (int i = 0; i < nqueues; i++) {
        struct queue *q = &queues[i];
        uint32_t first = q->head, n = 0, last = 0;
        while (q->len && q->ring[q->head].due <= now) {
            last = q->ring[q->head].id;
            q->head = (q->head + 1) % q->cap;
            q->len--;
            n++;
        }
        if (n) {
            verdict(NFQNL_MSG_VERDICT_BATCH, q->num, NF_ACCEPT, last);
            int64_t sent = now_ns(CLOCK_MONOTONIC);
            for (uint32_t k = 0; k < n; k++) {
                struct slot *s = &q->ring[(first + k) % q->cap];
                count_release(q, sent - s->due, s->due);
            }
        }
        if (q->len && q->ring[q->head].due < next) next = q->ring[q->head].due;
    }
    return next;
}

static long pending(void) {
    long n = 0;
    for (int i = 0; i < nqueues; i++) n += queues[i].len;
    return n;
}

/* The kernel's own drops per queue (queue or socket full), from this namespace's proc file;
 * an increase since the last poll becomes a drop window over the time between the polls. */
static void poll_kernel_drops(int64_t now) {
    char line[256];
    int64_t wall = now + wall_offset, since = last_drop_poll ? last_drop_poll + wall_offset : wall;
    last_drop_poll = now;
    static char proc_buffer[1 << 20]; /* the whole file in one read: the kernel walks its queues again per read */
    FILE *f = fopen("/proc/self/net/netfilter/nfnetlink_queue", "r");
    if (!f) return;
    setvbuf(f, proc_buffer, _IOFBF, sizeof proc_buffer);
    while (fgets(line, sizeof line, f)) {
        unsigned num, portid, total, mode, range, seq, one;
        unsigned long long d, u;
        if (sscanf(line, "%u %u %u %u %u %llu %llu %u %u", &num, &portid, &total, &mode, &range, &d, &u, &seq, &one) < 7)
            continue;
        struct queue *q = find_queue(num);
        if (!q) continue;
        unsigned long long more = d + u - q->kernel_dropped - q->kernel_user_dropped;
        if (more) note_window(q, since, wall, 0, (uint32_t)more);
        q->kernel_dropped = d;
        q->kernel_user_dropped = u;
    }
    fclose(f);
}

static int stats_json(char *out, size_t size, int reset, int64_t since) {
    int64_t now = now_ns(CLOCK_MONOTONIC);
    wall_offset = now_ns(CLOCK_REALTIME) - now;
    poll_kernel_drops(now);
    int n = snprintf(out, size, "{\"pid\": %d, \"core\": \"c\", \"enobufs\": %llu, \"wake_lag_us\": %.1f, "
                     "\"kernel_stamped\": %llu, \"now_ns\": %lld, \"hist_edges_us\": [", getpid(),
                     (unsigned long long)enobufs, wake_lag / 1e3, (unsigned long long)stamped,
                     (long long)(now + wall_offset));
    for (int b = 0; b < HIST_BUCKETS - 1; b++)
        n += snprintf(out + n, size - n, "%s%ld", b ? ", " : "", hist_edges_us[b]);
    n += snprintf(out + n, size - n, "], \"queues\": {");
    for (int i = 0; i < nqueues && (size_t)n < size; i++) {
        struct queue *q = &queues[i];
        n += snprintf(out + n, size - n,
                      "%s\"%u\": {\"kernel_dropped\": %llu, \"kernel_user_dropped\": %llu, \"queued\": %llu, \"released\": %llu, \"lost\": %llu, \"reordered\": %llu, \"late\": %llu, "
                      "\"max_late_us\": %.1f, \"window_max_late_us\": %.1f, \"mean_late_us\": %.1f, "
                      "\"pending\": %u, \"late_hist\": [",
                      i ? ", " : "", q->num, q->kernel_dropped, q->kernel_user_dropped, (unsigned long long)q->queued, (unsigned long long)q->released,
                      (unsigned long long)q->lost, (unsigned long long)q->reordered, (unsigned long long)q->late, q->max_late / 1e3,
                      q->window_max_late / 1e3, q->released ? q->total_late / 1e3 / q->released : 0.0, q->len);
        for (int b = 0; b < HIST_BUCKETS && (size_t)n < size; b++)
            n += snprintf(out + n, size - n, "%s%llu", b ? ", " : "", (unsigned long long)q->hist[b]);
        n += snprintf(out + n, size - n, "]");
        if (since >= 0 && (size_t)n < size) {
            n += snprintf(out + n, size - n, ", \"windows_incomplete\": %s, \"windows\": [",
                          q->overwritten_end >= since ? "true" : "false");
            int first = 1;
            for (uint32_t k = 0; k < q->wlen && (size_t)n < size; k++) {
                struct window *w = &q->windows[(q->whead + k) % MAX_WINDOWS];
                if (w->end < since) continue;
                n += snprintf(out + n, size - n, "%s[%lld, %lld, %u, %u, %.1f]", first ? "" : ", ", (long long)w->start,
                              (long long)w->end, w->late, w->dropped, w->max_late / 1e3);
                first = 0;
            }
            n += snprintf(out + n, size - n, "]");
        }
        n += snprintf(out + n, size - n, "}");
        if (reset) q->window_max_late = 0;
    }
    n += snprintf(out + n, size - n, "}}");
    return (size_t)n < size ? n : -1;
}

static char reply[8 << 20];

/* "set NUM:DELAY_US:JITTER_US:LOSS_PPM ...": every queue named is checked before any changes. */
static int set_queues(char *request, char *out, size_t size) {
    struct change { struct queue *q; int64_t delay, jitter; uint32_t loss_ppm; } changes[MAX_QUEUES];
    int n = 0;
    for (char *item = strtok(request + 3, " "); item; item = strtok(NULL, " ")) {
        unsigned num;
        double delay_us, jitter_us, loss_ppm;
        if (sscanf(item, "%u:%lf:%lf:%lf", &num, &delay_us, &jitter_us, &loss_ppm) != 4 || n == MAX_QUEUES)
            return snprintf(out, size, "{\"error\": \"bad item %.40s\"}", item);
        struct queue *q = find_queue((uint16_t)num);
        if (!q || delay_us < 0 || jitter_us < 0 || loss_ppm < 0 || loss_ppm > 1e6)
            return snprintf(out, size, "{\"error\": \"no queue or bad value in %.40s\"}", item);
        changes[n++] = (struct change){q, (int64_t)(delay_us * 1e3), (int64_t)(jitter_us * 1e3), (uint32_t)loss_ppm};
    }
    for (int i = 0; i < n; i++) {
        changes[i].q->delay = changes[i].delay;
        changes[i].q->jitter = changes[i].jitter;
        changes[i].q->loss_ppm = changes[i].loss_ppm;
    }
    return snprintf(out, size, "{\"applied_ns\": %lld, \"queues\": %d}", (long long)now_ns(CLOCK_REALTIME), n);
}

static void serve_control(int control) {
    char request[16384];
    struct sockaddr_un peer;
    socklen_t peer_len = sizeof peer;
    ssize_t n = recvfrom(control, request, sizeof request - 1, MSG_DONTWAIT, (struct sockaddr *)&peer, &peer_len);
    if (n <= 0 || peer_len <= sizeof(sa_family_t)) return;
    request[n] = 0;
    if (!strncmp(request, "set ", 4)) {
        int len = set_queues(request, reply, sizeof reply);
        if (len > 0) sendto(control, reply, len, 0, (struct sockaddr *)&peer, peer_len);
        return;
    }
    if (strncmp(request, "stats", 5)) return;
    const char *since = strstr(request, "since=");
    int len = stats_json(reply, sizeof reply, strstr(request, "reset") != NULL, since ? strtoll(since + 6, NULL, 10) : -1);
    if (len > 0) sendto(control, reply, len, 0, (struct sockaddr *)&peer, peer_len);
}

/* Twice how late a 500 us sleep wakes (75th percentile of 40), plus 50 us, at most 300 us. */
static void calibrate(void) {
    int64_t lags[40];
    for (int i = 0; i < 40; i++) {
        int64_t start = now_ns(CLOCK_MONOTONIC);
        struct timespec ts = {0, 500000};
        nanosleep(&ts, NULL);
        lags[i] = now_ns(CLOCK_MONOTONIC) - start - 500000;
    }
    for (int i = 1; i < 40; i++) /* insertion sort: 40 values */
        for (int j = i; j > 0 && lags[j] < lags[j - 1]; j--) { int64_t t = lags[j]; lags[j] = lags[j - 1]; lags[j - 1] = t; }
    int64_t lag = 2 * (lags[30] > 0 ? lags[30] : 0) + 50000;
    wake_lag = lag < MAX_SPIN_NS ? lag : MAX_SPIN_NS;
}

static void on_signal(int sig) { (void)sig; stopping = 1; }

static void run(int control) {
    struct pollfd fds[2] = {{nl, POLLIN, 0}, {control, POLLIN, 0}};
    int nfds = control >= 0 ? 2 : 1;
    sigset_t none;
    sigemptyset(&none);
    while (!stopping) {
        int64_t now = now_ns(CLOCK_MONOTONIC);
        int64_t next = release(now), timeout;
        /* After the release, never before it, and only where it ends before the next one is
         * due: the proc file has a line per queue, and reading 380 of them (a 20-site mesh)
         * took over a millisecond, which made packets due meanwhile late. Put off at most
         * fifty periods (a drop found late is attributed to a longer window, no drop is lost). */
        int64_t since_poll = now - last_drop_poll;
        if (since_poll >= DROP_POLL_NS) {
            int64_t start = now_ns(CLOCK_MONOTONIC);
            if (next == INT64_MAX || next - start > 2 * drop_poll_cost + wake_lag || since_poll >= 50 * DROP_POLL_NS) {
                poll_kernel_drops(start);
                int64_t cost = now_ns(CLOCK_MONOTONIC) - start;
                drop_poll_cost = cost > drop_poll_cost ? cost : (7 * drop_poll_cost + cost) / 8;
            }
        }
        if (next == INT64_MAX) {
            timeout = -1;
        } else if (pending() <= SPIN_MAX_PENDING) {
            /* Light traffic: sleep to just short of the deadline, then spin to it. */
            timeout = next - now_ns(CLOCK_MONOTONIC) - wake_lag;
            if (timeout <= 0) {
                while (now_ns(CLOCK_MONOTONIC) < next) receive(now_ns(CLOCK_MONOTONIC), 8);
                continue;
            }
        } else {
            /* Under load, never busy-wait: the CPU belongs to the traffic's endpoints. */
            timeout = next - now_ns(CLOCK_MONOTONIC);
            if (timeout < LOADED_MIN_SLEEP_NS) timeout = LOADED_MIN_SLEEP_NS;
        }
        if (timeout < 0 || timeout > DROP_POLL_NS) timeout = DROP_POLL_NS;
        struct timespec ts = {timeout / 1000000000LL, timeout % 1000000000LL};
        int ready = ppoll(fds, nfds, &ts, &none);
        if (ready <= 0) continue;
        if (fds[0].revents) receive(now_ns(CLOCK_MONOTONIC), 64);
        if (nfds == 2 && fds[1].revents) serve_control(control);
    }
}

static void usage(void) {
    fprintf(stderr, "usage: delayline-core [--control PATH] [--seed N] "
                    "--queue NUM:DELAY_US:JITTER_US:LOSS_PPM:MAXLEN ...\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *control_path = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--control") && i + 1 < argc) {
            control_path = argv[++i];
        } else if (!strcmp(argv[i], "--seed") && i + 1 < argc) {
            rng_state = strtoull(argv[++i], NULL, 10) * 0x9E3779B97F4A7C15ULL | 1;
        } else if (!strcmp(argv[i], "--queue") && i + 1 < argc && nqueues < MAX_QUEUES) {
            unsigned num, maxlen;
            double delay_us, jitter_us, loss_ppm, reorder_ppm = 0;
            int got = sscanf(argv[++i], "%u:%lf:%lf:%lf:%u:%lf", &num, &delay_us, &jitter_us, &loss_ppm, &maxlen,
                             &reorder_ppm);
            if (got < 5 || num > 65535 || maxlen == 0 || queue_of[num] || reorder_ppm < 0 || reorder_ppm > 1e6)
                usage();
            struct queue *q = &queues[nqueues++];
            queue_of[num] = (int16_t)nqueues;
            q->num = num;
            q->delay = (int64_t)(delay_us * 1000);
            q->jitter = (int64_t)(jitter_us * 1000);
            q->loss_ppm = (uint32_t)loss_ppm;
            q->reorder_ppm = (uint32_t)reorder_ppm;
            q->cap = maxlen;
            q->ring = calloc(maxlen, sizeof(struct slot));
            if (!q->ring) { perror("calloc"); return 1; }
        } else {
            usage();
        }
    }
    if (!nqueues) usage();
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    nl = socket(AF_NETLINK, SOCK_RAW, NETLINK_NETFILTER);
    if (nl < 0) { perror("netlink socket"); return 1; }
    int size = SOCKET_BUFFER;
    setsockopt(nl, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size);
    setsockopt(nl, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof size);
    struct sockaddr_nl local = {.nl_family = AF_NETLINK};
    if (bind(nl, (struct sockaddr *)&local, sizeof local) < 0) { perror("netlink bind"); return 1; }
    bind_queues();
    /* Any socket asking for receive timestamps makes the kernel stamp every packet. */
    int stamp_request = socket(AF_INET, SOCK_DGRAM, 0), on = 1;
    setsockopt(stamp_request, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof on);

    int control = -1;
    if (control_path) {
        struct sockaddr_un addr = {.sun_family = AF_UNIX};
        if (strlen(control_path) >= sizeof addr.sun_path) { fprintf(stderr, "control path too long\n"); return 2; }
        strcpy(addr.sun_path, control_path);
        control = socket(AF_UNIX, SOCK_DGRAM, 0);
        if (bind(control, (struct sockaddr *)&addr, sizeof addr) < 0) { perror(control_path); return 1; }
        int reply_buffer = sizeof reply; /* a reply is one datagram, windows and all */
        setsockopt(control, SOL_SOCKET, SO_SNDBUFFORCE, &reply_buffer, sizeof reply_buffer);
    }
    /* Wake on time: 1 ns timer slack, and a real-time priority where allowed. */
    prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0);
    struct sched_param param = {.sched_priority = 20};
    int policy_ok = sched_setscheduler(0, SCHED_FIFO, &param) == 0;
    calibrate();
    printf("ready%s\n", policy_ok ? "" : " (no real-time priority)");
    fflush(stdout);
    run(control);
    if (control_path) unlink(control_path);
    return 0;
}
