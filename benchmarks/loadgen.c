/*
 * loadgen: the closed-loop CoAP-over-UDP load generator of coapio's server-throughput benchmark.
 *
 * Keeps W requests (GET, CON or NON) in flight against one loopback server, spread over K client
 * sockets (source ports); each answer immediately releases its slot for the next request. Single
 * threaded, epoll + recvmmsg, connected non-blocking sockets.
 *
 *   loadgen [-w W] [-k K] [-d SEC] [-W WARMUP] [-T TIMEOUT_MS] [-N] [-p a/b] [-P PID[,PID]]
 *           [-n TOTAL] [-R ROTATE] [--rss-at N1,N2,...] [--datagrams FILE [--ok-code C.DD]] HOST PORT
 *   loadgen --echo-server PORT     a canned-response "server" (self-test ceiling, not a CoAP server)
 *
 * Measurement: the run is WARMUP s of warm-up, then SEC s of measurement, then a drain of at most
 * TIMEOUT_MS during which no new request is sent. Only requests *sent* during the measurement window
 * count: `ok` are those answered with 2.05 (2.04 with --datagrams), `unauthorized` with 4.01, `errors` with
 * any other response code, `rst` with a RST, `lost` those unanswered after TIMEOUT_MS (there are no
 * retransmissions: a lost request is counted, its slot reused). rps = ok / SEC. Latency is send ->
 * response (CLOCK_MONOTONIC), from a 1-µs histogram, nearest rank.
 *
 * Matching: the token is 8 bytes, the slot index (2 bytes) then 6 random bytes, fresh per request; a
 * piggy-backed ACK must match the slot's token, message ID and socket; a separate (CON/NON) response
 * must match token and socket (a CON one is acknowledged with an empty ACK); an empty ACK is matched by
 * message ID and socket and leaves the request waiting. A ping from the server (an empty CON: it checks
 * that we receive at our address before it sends a large response, RFC 9175 §2.4) gets a RST and counts
 * as `pings`. Anything else counts as `unmatched` or `bad`.
 *
 * Message IDs: each socket starts at a random MID and increments it per request. RFC 7252 forbids
 * reusing a MID towards the same peer within EXCHANGE_LIFETIME (247 s), so after ROTATE requests
 * (-R, default 60000) a socket is retired (it still receives answers for its requests in flight) and a
 * fresh socket, hence a fresh source port, takes its place: no (port, MID) pair is ever used twice in
 * one run. A small -R makes the load come "from many client ports" (the server-memory benchmark).
 *
 * -n TOTAL ends the run once TOTAL requests have been sent in all (warm-up included; the drain follows).
 * --rss-at N1,N2,... reads the server's VmRSS (/proc/PID/status, summed over -P's processes) when the
 * N-th request has been completed (answered or lost), for each N: the "rss_at" field of the JSON.
 *
 * --datagrams FILE replays pre-encoded requests instead of building GET /: FILE is a sequence of records,
 * each a 2-byte big-endian length and that many bytes of a CoAP request with an 8-byte token (e.g.
 * OSCORE-protected requests, one Partial IV each, in increasing order). Each is sent once, in file order;
 * the generator rewrites only the type (CON, or NON with -N), the message ID and the token, which OSCORE
 * does not protect. The run ends when the file is used up (as with -n TOTAL; the window then ends with
 * the last request sent). An answer counts as `ok` when its code is 2.04 (the outer code of an
 * OSCORE-protected 2.05; --ok-code changes it), and 4.01 answers (an OSCORE replay or unknown-context
 * refusal) count as `unauthorized`, apart from the other `errors`.
 *
 * CPU: the generator's own CPU time (getrusage) and, with -P PID[,PID...], the server's (/proc/PID/stat
 * utime + stime, summed over its processes) are sampled at the start and end of the measurement window
 * and reported as % of one core.
 *
 * Output: one JSON object on stdout.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_WINDOW 4096
#define MAX_SOCKS 65536  /* live + retired sockets in one run (each has its own source port) */
#define HIST_US 2000000  /* 1-µs buckets up to 2 s; later answers go to the last bucket */
#define BATCH 64
#define MAX_MARKS 16     /* --rss-at points */

struct sock {
    int fd;
    uint16_t next_mid;
    uint32_t used;       /* MIDs handed out on this socket */
    int outstanding;     /* slots whose current request went out on it */
    int retired;         /* no new requests; closed once outstanding == 0 */
};

struct slot {
    int sock;            /* index into socks[] of the socket the request went out on */
    uint16_t mid;
    uint8_t token[8];
    uint64_t sent_ns;
    int inflight;
    int counted;         /* sent inside the measurement window */
};

static struct sock socks[MAX_SOCKS];
static uint8_t port_used[65536 / 8]; /* source ports used so far in this run (bitmap, host order) */
static int port_retries;
static int nsocks_total;         /* entries used in socks[] */
static int *live;                /* live[i]: index in socks[] of the i-th active socket */
static struct slot slots[MAX_WINDOW];
static uint32_t *hist;
static int epfd;
static struct sockaddr_in server;

static int window = 16, nsock = 8, non = 0;
static double duration = 5.0, warmup = 1.0;
static long timeout_ms = 1000;
static const char *path = "";
#define MAX_PIDS 64
static long server_pids[MAX_PIDS]; /* -P: the server's processes (several: SO_REUSEPORT workers) */
static int npids;
static long rotate = 60000;      /* requests per socket before it is replaced by a fresh one */
static uint64_t total_limit = 0; /* -n: stop sending after this many requests (0: no limit) */
static uint64_t marks[MAX_MARKS], completed_total;
static long mark_rss_kb[MAX_MARKS];
static int nmarks, next_mark;
static uint8_t *dgram_data;      /* --datagrams: the file's records, back to back */
static size_t *dgram_off;        /* offset of each record's length prefix in dgram_data */
static uint64_t ndgrams, next_dgram;
static int ok_code = 0x45;       /* the response code that counts as ok: 2.05, or 2.04 with --datagrams */

static uint64_t c_unauth;
static uint64_t c_sent, c_ok, c_err, c_rst, c_lost, c_unmatched, c_bad, c_sockerr, c_acks, c_pings;
static uint64_t sent_total, sockets_opened;
static long resp_bytes = -1;
static uint64_t lat_max, lat_sum;
static uint64_t rng_state;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t rnd(void) { /* xorshift64*, seeded from getrandom */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1Dull;
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

static int open_socket(void) {
    if (nsocks_total >= MAX_SOCKS) {
        fprintf(stderr, "loadgen: too many sockets (MID rotation); use a shorter run or a larger -R\n");
        exit(2);
    }
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    int size = 1 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    if (connect(fd, (struct sockaddr *)&server, sizeof server) < 0) die("connect");
    /* A fresh socket must have a source port not used before in this run (see MID rotation). */
    struct sockaddr_in me;
    socklen_t len = sizeof me;
    if (getsockname(fd, (struct sockaddr *)&me, &len) < 0) die("getsockname");
    uint16_t port = ntohs(me.sin_port);
    if (port_used[port >> 3] & (1u << (port & 7))) {
        if (++port_retries > 100000) {
            fprintf(stderr, "loadgen: cannot find an unused source port (use a larger -R)\n");
            exit(2);
        }
        int again = open_socket(); /* keeps fd bound meanwhile, so the kernel picks another port */
        close(fd);
        return again;
    }
    port_used[port >> 3] |= (uint8_t)(1u << (port & 7));
    int i = nsocks_total++;
    socks[i].fd = fd;
    socks[i].next_mid = (uint16_t)rnd();
    socks[i].used = 0;
    socks[i].outstanding = 0;
    socks[i].retired = 0;
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
    sockets_opened++;
    return i;
}

static void release(int si) {
    struct sock *s = &socks[si];
    s->outstanding--;
    if (s->retired && s->outstanding == 0 && s->fd >= 0) {
        close(s->fd); /* also leaves the epoll set */
        s->fd = -1;
    }
}

static size_t build_request(uint8_t *buf, uint16_t mid, const uint8_t token[8]) {
    size_t n = 0;
    buf[n++] = (uint8_t)(0x40 | (non ? 0x10 : 0x00) | 8);
    buf[n++] = 0x01; /* GET */
    buf[n++] = (uint8_t)(mid >> 8);
    buf[n++] = (uint8_t)(mid & 0xff);
    memcpy(buf + n, token, 8);
    n += 8;
    /* Uri-Path (11), one option per segment */
    int last = 0;
    const char *p = path;
    while (*p) {
        const char *e = strchr(p, '/');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len > 0) {
            int delta = 11 - last;
            last = 11;
            if (len < 13) {
                buf[n++] = (uint8_t)(delta << 4 | len);
            } else if (len < 269) {
                buf[n++] = (uint8_t)(delta << 4 | 13);
                buf[n++] = (uint8_t)(len - 13);
            } else {
                fprintf(stderr, "loadgen: path segment too long\n");
                exit(2);
            }
            memcpy(buf + n, p, len);
            n += len;
        }
        if (!e) break;
        p = e + 1;
    }
    return n;
}

static int measuring; /* 0 warm-up, 1 window, 2 drain */

static void issue(int idx, uint64_t t) {
    struct slot *sl = &slots[idx];
    int which = idx % nsock;
    int si = live[which];
    if (socks[si].used >= (uint32_t)rotate) {
        socks[si].retired = 1;
        int fresh = open_socket();
        if (socks[si].outstanding == 0) {
            close(socks[si].fd);
            socks[si].fd = -1;
        }
        live[which] = si = fresh;
    }
    struct sock *s = &socks[si];
    uint64_t r = rnd();
    sl->token[0] = (uint8_t)(idx >> 8);
    sl->token[1] = (uint8_t)(idx & 0xff);
    for (int i = 2; i < 8; i++) sl->token[i] = (uint8_t)(r >> (8 * (i - 2)));
    sl->mid = s->next_mid++;
    s->used++;
    sl->sock = si;
    uint8_t buf[1500];
    size_t n;
    if (dgram_data) {
        const uint8_t *rec = dgram_data + dgram_off[next_dgram++];
        n = (size_t)(rec[0] << 8 | rec[1]);
        memcpy(buf, rec + 2, n);
        buf[0] = (uint8_t)(0x40 | (non ? 0x10 : 0x00) | 8);
        buf[2] = (uint8_t)(sl->mid >> 8);
        buf[3] = (uint8_t)(sl->mid & 0xff);
        memcpy(buf + 4, sl->token, 8);
    } else {
        n = build_request(buf, sl->mid, sl->token);
    }
    sl->sent_ns = t;
    sl->inflight = 1;
    sl->counted = measuring == 1;
    s->outstanding++;
    sent_total++;
    if (sl->counted) c_sent++;
    if (send(s->fd, buf, n, 0) < 0) c_sockerr++; /* the slot times out and is counted lost */
}

static long servers_rss_kb(void);

/* One more request finished (answered or lost): take the --rss-at readings that are due. */
static void finished(void) {
    completed_total++;
    while (next_mark < nmarks && completed_total >= marks[next_mark])
        mark_rss_kb[next_mark++] = servers_rss_kb();
}

static int may_send(void) { return measuring < 2 && (total_limit == 0 || sent_total < total_limit); }

/* A request's answer: its response code, or -1 for a RST. */
static void complete(int idx, uint64_t t, int code) {
    int rst = code < 0, ok = code == ok_code;
    struct slot *sl = &slots[idx];
    sl->inflight = 0;
    release(sl->sock);
    finished();
    if (sl->counted) {
        if (rst) c_rst++;
        else if (ok) c_ok++;
        else if (code == 0x81) c_unauth++;
        else c_err++;
        if (ok) {
            uint64_t us = (t - sl->sent_ns) / 1000;
            hist[us < HIST_US ? us : HIST_US - 1]++;
            lat_sum += us;
            if (us > lat_max) lat_max = us;
        }
    }
    if (may_send()) issue(idx, t);
}

static int find_by_mid(int si, uint16_t mid) {
    for (int i = 0; i < window; i++)
        if (slots[i].inflight && slots[i].sock == si && slots[i].mid == mid) return i;
    return -1;
}

static int find_by_token(int si, const uint8_t *tok, int tkl) {
    if (tkl != 8) return -1;
    int idx = tok[0] << 8 | tok[1];
    if (idx >= window) return -1;
    struct slot *sl = &slots[idx];
    if (!sl->inflight || sl->sock != si || memcmp(sl->token, tok, 8) != 0) return -1;
    return idx;
}

static void handle(int si, const uint8_t *d, ssize_t n, uint64_t t) {
    if (n < 4 || (d[0] >> 6) != 1 || (d[0] & 15) > 8 || 4 + (d[0] & 15) > n) {
        c_bad++;
        return;
    }
    int type = (d[0] >> 4) & 3, tkl = d[0] & 15, code = d[1];
    uint16_t mid = (uint16_t)(d[2] << 8 | d[3]);
    const uint8_t *tok = d + 4;
    int cls = code >> 5;
    if (type == 3) { /* RST */
        int idx = find_by_mid(si, mid);
        if (idx < 0) c_unmatched++;
        else complete(idx, t, -1);
        return;
    }
    if (type == 2) { /* ACK */
        if (code == 0) {
            if (find_by_mid(si, mid) >= 0) c_acks++; /* separate response follows */
            else c_unmatched++;
            return;
        }
        if (cls != 2 && cls != 4 && cls != 5) {
            c_bad++;
            return;
        }
        int idx = find_by_mid(si, mid);
        if (idx < 0) {
            c_unmatched++;
            return;
        }
        if (find_by_token(si, tok, tkl) != idx) {
            c_bad++; /* right MID, wrong token: e.g. a dedup cache answering a reused MID */
            return;
        }
        if (resp_bytes < 0) resp_bytes = n;
        complete(idx, t, code);
        return;
    }
    /* CON or NON: a separate response (NON requests get NON responses) */
    if (cls != 2 && cls != 4 && cls != 5) {
        if (type == 0) { /* a ping or a request to us: reset it */
            uint8_t rst[4] = {0x70, 0, d[2], d[3]};
            send(socks[si].fd, rst, 4, 0);
            if (code == 0 && n == 4) { /* a ping: the server checks our address (RFC 9175 §2.4) */
                c_pings++;
                return;
            }
        }
        c_bad++;
        return;
    }
    if (type == 0) {
        uint8_t ack[4] = {0x60, 0, d[2], d[3]};
        send(socks[si].fd, ack, 4, 0);
    }
    int idx = find_by_token(si, tok, tkl);
    if (idx < 0) {
        c_unmatched++;
        return;
    }
    if (resp_bytes < 0) resp_bytes = n;
    complete(idx, t, code);
}

static double self_cpu(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static double proc_cpu(long pid) {
    if (pid <= 0) return -1;
    char fn[64], buf[4096];
    snprintf(fn, sizeof fn, "/proc/%ld/stat", pid);
    FILE *f = fopen(fn, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p) return -1;
    unsigned long ut = 0, st = 0;
    /* after ")": state(3) ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime(14) stime */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2) return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static long proc_rss_kb(long pid) {
    if (pid <= 0) return -1;
    char fn[64], line[256];
    snprintf(fn, sizeof fn, "/proc/%ld/status", pid);
    FILE *f = fopen(fn, "r");
    if (!f) return -1;
    long kb = -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kb = atol(line + 6);
            break;
        }
    fclose(f);
    return kb;
}

/* The sums over the server's processes; -1 when one cannot be read (or there is none). */
static double servers_cpu(void) {
    double sum = 0;
    for (int i = 0; i < npids; i++) {
        double c = proc_cpu(server_pids[i]);
        if (c < 0) return -1;
        sum += c;
    }
    return npids ? sum : -1;
}

static long servers_rss_kb(void) {
    long sum = 0;
    for (int i = 0; i < npids; i++) {
        long kb = proc_rss_kb(server_pids[i]);
        if (kb < 0) return -1;
        sum += kb;
    }
    return npids ? sum : -1;
}

static uint64_t percentile(uint64_t total, double q) {
    if (total == 0) return 0;
    uint64_t rank = (uint64_t)(q * (double)total + 0.999999);
    if (rank < 1) rank = 1;
    uint64_t acc = 0;
    for (uint64_t i = 0; i < HIST_US; i++) {
        acc += hist[i];
        if (acc >= rank) return i;
    }
    return HIST_US - 1;
}

/* --- the canned-response echo "server" (self-test only) ------------------------------------------ */

static void echo_server(int port, int payload) __attribute__((noreturn));
static void echo_server(int port, int payload) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) die("socket");
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
    static uint8_t in[BATCH][1500], out[BATCH][1500];
    static struct sockaddr_in from[BATCH];
    struct mmsghdr rm[BATCH], sm[BATCH];
    struct iovec riov[BATCH], siov[BATCH];
    for (int i = 0; i < BATCH; i++) {
        riov[i].iov_base = in[i];
        riov[i].iov_len = sizeof in[i];
    }
    for (;;) {
        for (int i = 0; i < BATCH; i++) {
            memset(&rm[i].msg_hdr, 0, sizeof rm[i].msg_hdr);
            rm[i].msg_hdr.msg_iov = &riov[i];
            rm[i].msg_hdr.msg_iovlen = 1;
            rm[i].msg_hdr.msg_name = &from[i];
            rm[i].msg_hdr.msg_namelen = sizeof from[i];
        }
        int got = recvmmsg(fd, rm, BATCH, MSG_WAITFORONE, NULL);
        if (got < 0) {
            if (errno == EINTR) continue;
            die("recvmmsg");
        }
        int m = 0;
        for (int i = 0; i < got; i++) {
            uint8_t *d = in[i];
            unsigned n = rm[i].msg_len;
            if (n < 4 || (d[0] >> 6) != 1 || (d[0] & 15) > 8 || n < 4u + (d[0] & 15)) continue;
            int type = (d[0] >> 4) & 3, tkl = d[0] & 15;
            if (type > 1 || d[1] == 0 || d[1] >= 32) continue; /* requests only */
            uint8_t *o = out[m];
            o[0] = (uint8_t)(0x40 | (type == 0 ? 0x20 : 0x10) | tkl); /* ACK for CON, NON for NON */
            o[1] = 0x45;
            o[2] = d[2];
            o[3] = (uint8_t)(type == 0 ? d[3] : d[3] ^ 0x80);
            memcpy(o + 4, d + 4, (size_t)tkl);
            size_t len = 4 + (size_t)tkl;
            if (payload > 0) {
                o[len++] = 0xff;
                memset(o + len, 'x', (size_t)payload);
                len += (size_t)payload;
            }
            siov[m].iov_base = o;
            siov[m].iov_len = len;
            memset(&sm[m].msg_hdr, 0, sizeof sm[m].msg_hdr);
            sm[m].msg_hdr.msg_iov = &siov[m];
            sm[m].msg_hdr.msg_iovlen = 1;
            sm[m].msg_hdr.msg_name = &from[i];
            sm[m].msg_hdr.msg_namelen = rm[i].msg_hdr.msg_namelen;
            m++;
        }
        if (m) sendmmsg(fd, sm, (unsigned)m, 0);
    }
}

/* --- --datagrams: pre-encoded requests ------------------------------------------------------------ */

static void load_datagrams(const char *file) {
    FILE *f = fopen(file, "rb");
    if (!f) die(file);
    if (fseek(f, 0, SEEK_END) < 0) die(file);
    long size = ftell(f);
    if (size < 0) die(file);
    rewind(f);
    dgram_data = malloc(size ? (size_t)size : 1);
    if (!dgram_data) die("malloc");
    if (fread(dgram_data, 1, (size_t)size, f) != (size_t)size) die(file);
    fclose(f);
    size_t pos = 0, cap = 1024;
    dgram_off = malloc(cap * sizeof *dgram_off);
    if (!dgram_off) die("malloc");
    while (pos + 2 <= (size_t)size) {
        size_t n = (size_t)(dgram_data[pos] << 8 | dgram_data[pos + 1]);
        const uint8_t *d = dgram_data + pos + 2;
        if (pos + 2 + n > (size_t)size || n < 12 || n > 1400 || (d[0] >> 6) != 1 || (d[0] & 15) != 8 ||
            d[1] == 0 || d[1] >= 32) {
            fprintf(stderr, "loadgen: %s: record %llu is not a CoAP request with an 8-byte token "
                    "(<= 1400 B)\n", file, (unsigned long long)ndgrams);
            exit(2);
        }
        if (ndgrams == cap) {
            cap *= 2;
            dgram_off = realloc(dgram_off, cap * sizeof *dgram_off);
            if (!dgram_off) die("realloc");
        }
        dgram_off[ndgrams++] = pos;
        pos += 2 + n;
    }
    if (pos != (size_t)size || ndgrams == 0) {
        fprintf(stderr, "loadgen: %s: empty or truncated datagram file\n", file);
        exit(2);
    }
}

/* --- main ----------------------------------------------------------------------------------------- */

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen [-w W] [-k K] [-d SEC] [-W WARMUP_SEC] [-T TIMEOUT_MS] [-N] [-p PATH]\n"
            "               [-P PID[,PID...]] [-n TOTAL] [-R ROTATE] [--rss-at N1,N2,...]\n"
            "               [--datagrams FILE [--ok-code C.DD]] HOST PORT\n"
            "       loadgen --echo-server PORT [--payload BYTES]\n");
    exit(2);
}

int main(int argc, char **argv) {
    static const struct option longopts[] = {
        {"window", required_argument, 0, 'w'},   {"sockets", required_argument, 0, 'k'},
        {"duration", required_argument, 0, 'd'}, {"warmup", required_argument, 0, 'W'},
        {"timeout", required_argument, 0, 'T'},  {"non", no_argument, 0, 'N'},
        {"path", required_argument, 0, 'p'},     {"server-pid", required_argument, 0, 'P'},
        {"echo-server", required_argument, 0, 'E'}, {"payload", required_argument, 0, 'S'},
        {"total", required_argument, 0, 'n'},    {"rotate", required_argument, 0, 'R'},
        {"rss-at", required_argument, 0, 'M'},   {"datagrams", required_argument, 0, 'F'},
        {"ok-code", required_argument, 0, 'O'},  {0, 0, 0, 0}};
    int echo_port = 0, payload = 136, c, ok_code_given = 0;
    const char *dgram_file = NULL;
    while ((c = getopt_long(argc, argv, "w:k:d:W:T:Np:P:n:R:", longopts, NULL)) != -1) {
        switch (c) {
        case 'w': window = atoi(optarg); break;
        case 'k': nsock = atoi(optarg); break;
        case 'd': duration = atof(optarg); break;
        case 'W': warmup = atof(optarg); break;
        case 'T': timeout_ms = atol(optarg); break;
        case 'N': non = 1; break;
        case 'p': path = optarg; break;
        case 'P':
            for (char *p = optarg; *p && npids < MAX_PIDS;) {
                char *end;
                long v = strtol(p, &end, 10);
                if (end == p) usage();
                server_pids[npids++] = v;
                p = *end == ',' ? end + 1 : end;
            }
            break;
        case 'E': echo_port = atoi(optarg); break;
        case 'S': payload = atoi(optarg); break;
        case 'n': total_limit = strtoull(optarg, NULL, 10); break;
        case 'R': rotate = atol(optarg); break;
        case 'M':
            for (char *p = optarg; *p && nmarks < MAX_MARKS;) {
                char *end;
                unsigned long long v = strtoull(p, &end, 10);
                if (end == p) usage();
                marks[nmarks++] = v;
                p = *end == ',' ? end + 1 : end;
            }
            break;
        case 'F': dgram_file = optarg; break;
        case 'O': {
            int cls, detail;
            if (sscanf(optarg, "%d.%d", &cls, &detail) != 2 || cls < 0 || cls > 7 || detail < 0 ||
                detail > 31)
                usage();
            ok_code = cls << 5 | detail;
            ok_code_given = 1;
            break;
        }
        default: usage();
        }
    }
    if (echo_port) echo_server(echo_port, payload < 0 || payload > 1400 ? 136 : payload);
    if (argc - optind != 2) usage();
    if (window < 1 || window > MAX_WINDOW || nsock < 1 || nsock > 256 || duration <= 0 || warmup < 0 ||
        timeout_ms < 1 || rotate < 1 || rotate > 65536) {
        fprintf(stderr, "loadgen: bad arguments (1 <= W <= %d, 1 <= K <= 256, 1 <= ROTATE <= 65536)\n",
                MAX_WINDOW);
        return 2;
    }
    if (nsock > window) nsock = window;
    if (dgram_file) {
        load_datagrams(dgram_file);
        if (!ok_code_given) ok_code = 0x44;
        if (total_limit == 0 || total_limit > ndgrams) total_limit = ndgrams;
    }
    server.sin_family = AF_INET;
    server.sin_port = htons((uint16_t)atoi(argv[optind + 1]));
    if (inet_pton(AF_INET, argv[optind], &server.sin_addr) != 1 ||
        (ntohl(server.sin_addr.s_addr) >> 24) != 127) {
        fprintf(stderr, "loadgen: HOST must be an IPv4 loopback address (127.0.0.0/8)\n");
        return 2;
    }
    if (getrandom(&rng_state, sizeof rng_state, 0) != sizeof rng_state || rng_state == 0)
        rng_state = now_ns() | 1;
    hist = calloc(HIST_US, sizeof *hist);
    live = calloc((size_t)nsock, sizeof *live);
    if (!hist || !live) die("calloc");
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) die("epoll_create1");
    for (int i = 0; i < nsock; i++) live[i] = open_socket();

    uint64_t t0 = now_ns();
    uint64_t t_win = t0 + (uint64_t)(warmup * 1e9), t_end = t_win + (uint64_t)(duration * 1e9);
    uint64_t timeout_ns = (uint64_t)timeout_ms * 1000000ull, t_drain_end = 0, last_scan = t0;
    double cpu0 = 0, cpu1 = 0, srv0 = -1, srv1 = -1;
    uint64_t w0 = 0, w1 = 0;
    if (warmup == 0) {
        measuring = 1;
        cpu0 = self_cpu();
        srv0 = servers_cpu();
        w0 = t0;
    }
    for (int i = 0; i < window && may_send(); i++) issue(i, now_ns());

    static uint8_t bufs[BATCH][1500];
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    struct epoll_event evs[64];
    for (;;) {
        int nev = epoll_wait(epfd, evs, 64, 2);
        if (nev < 0 && errno != EINTR) die("epoll_wait");
        for (int e = 0; e < nev; e++) {
            int si = (int)evs[e].data.u32;
            if (socks[si].fd < 0) continue;
            for (;;) {
                for (int i = 0; i < BATCH; i++) {
                    iov[i].iov_base = bufs[i];
                    iov[i].iov_len = sizeof bufs[i];
                    memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
                    msgs[i].msg_hdr.msg_iov = &iov[i];
                    msgs[i].msg_hdr.msg_iovlen = 1;
                }
                int got = recvmmsg(socks[si].fd, msgs, BATCH, MSG_DONTWAIT, NULL);
                if (got < 0) {
                    if (errno == EAGAIN || errno == EWOULDBLOCK) break;
                    if (errno == EINTR) continue;
                    c_sockerr++; /* e.g. ECONNREFUSED from an ICMP port unreachable */
                    break;
                }
                uint64_t t = now_ns();
                /* `handle` may close this socket (a retired one whose last request it answers). */
                for (int i = 0; i < got; i++) handle(si, bufs[i], msgs[i].msg_len, t);
                if (got < BATCH || socks[si].fd < 0) break;
            }
        }
        uint64_t t = now_ns();
        if (measuring == 0 && t >= t_win) {
            measuring = 1;
            cpu0 = self_cpu();
            srv0 = servers_cpu();
            w0 = t;
        } else if (measuring == 1 && (t >= t_end || (total_limit && sent_total >= total_limit))) {
            measuring = 2;
            cpu1 = self_cpu();
            srv1 = servers_cpu();
            w1 = t;
            t_drain_end = t + timeout_ns;
        }
        if (t - last_scan >= 10000000ull || measuring == 2) {
            last_scan = t;
            int busy = 0;
            for (int i = 0; i < window; i++) {
                struct slot *sl = &slots[i];
                if (!sl->inflight) continue;
                if (t - sl->sent_ns >= timeout_ns) {
                    sl->inflight = 0;
                    release(sl->sock);
                    finished();
                    if (sl->counted) c_lost++;
                    if (may_send()) issue(i, t);
                    else continue;
                }
                busy = 1;
            }
            if (measuring == 2 && (!busy || t >= t_drain_end)) break;
        }
    }
    for (int i = 0; i < window; i++)
        if (slots[i].inflight && slots[i].counted) c_lost++;

    double window_s = (double)(w1 - w0) / 1e9;
    uint64_t answered = c_ok;
    printf("{\"generator\": \"loadgen\", \"type\": \"%s\", \"window\": %d, \"sockets\": %d, "
           "\"duration_s\": %.3f, \"warmup_s\": %.3f, \"timeout_ms\": %ld, "
           "\"sent\": %llu, \"ok\": %llu, \"errors\": %llu, \"rst\": %llu, \"lost\": %llu, "
           "\"empty_acks\": %llu, \"unmatched\": %llu, \"bad\": %llu, \"sockerr\": %llu, "
           "\"rps\": %.1f, \"p50_us\": %llu, \"p90_us\": %llu, \"p99_us\": %llu, \"max_us\": %llu, "
           "\"mean_us\": %.1f, \"loadgen_cpu_pct\": %.1f, \"server_cpu_pct\": %.1f, "
           "\"response_bytes\": %ld, \"sockets_opened\": %llu, \"requests_total\": %llu",
           non ? "NON" : "CON", window, nsock, window_s, warmup, timeout_ms,
           (unsigned long long)c_sent, (unsigned long long)c_ok, (unsigned long long)c_err,
           (unsigned long long)c_rst, (unsigned long long)c_lost, (unsigned long long)c_acks,
           (unsigned long long)c_unmatched, (unsigned long long)c_bad, (unsigned long long)c_sockerr,
           window_s > 0 ? (double)c_ok / window_s : 0.0,
           (unsigned long long)percentile(answered, 0.50), (unsigned long long)percentile(answered, 0.90),
           (unsigned long long)percentile(answered, 0.99), (unsigned long long)lat_max,
           answered ? (double)lat_sum / (double)answered : 0.0,
           window_s > 0 ? 100.0 * (cpu1 - cpu0) / window_s : 0.0,
           (srv0 >= 0 && srv1 >= 0 && window_s > 0) ? 100.0 * (srv1 - srv0) / window_s : -1.0,
           resp_bytes, (unsigned long long)sockets_opened, (unsigned long long)sent_total);
    printf(", \"pings\": %llu, \"completed_total\": %llu, \"unauthorized\": %llu, \"ok_code\": \"%d.%02d\", "
           "\"datagrams\": %llu, \"rss_at\": [", (unsigned long long)c_pings,
           (unsigned long long)completed_total, (unsigned long long)c_unauth, ok_code >> 5, ok_code & 31,
           (unsigned long long)ndgrams);
    for (int i = 0; i < nmarks; i++)
        printf("%s[%llu, %ld]", i ? ", " : "", (unsigned long long)marks[i], i < next_mark ? mark_rss_kb[i] : -1L);
    printf("]}\n");
    return 0;
}
