/*
 * dtlsload: the closed-loop CoAP-over-DTLS (PSK) load generator of coapio's DTLS benchmark
 * (benchmarks/dtls_throughput.py). OpenSSL, single threaded, epoll, non-blocking connected sockets.
 *
 *   dtlsload -m requests   [-k SESSIONS] [-w WINDOW] [-d SEC] [-W WARMUP] [-T TIMEOUT_MS]
 *            -u IDENTITY -K KEY [-C CIPHERS] [-P PID] HOST PORT
 *   dtlsload -m handshakes [-c CONCURRENT] [-d SEC] [-W WARMUP] -u IDENTITY -K KEY [-C CIPHERS] [-P PID] HOST PORT
 *
 * requests: SESSIONS DTLS sessions are handshaken first (not measured); then WINDOW CON GET / requests
 * stay in flight, slot i on session i mod SESSIONS, each answer (a piggy-backed 2.05 ACK with the
 * slot's token) immediately replaced by the next request. Only requests sent inside the measurement
 * window count; one unanswered after TIMEOUT_MS is `lost` (no retransmission) and its slot reused.
 * rps = ok / SEC; latency send -> answer from a 1-us histogram (nearest rank).
 *
 * handshakes: CONCURRENT slots each run full handshakes back to back (a fresh socket, hence a fresh
 * source port and a full cookie exchange, then close_notify); hps = completed handshakes / SEC.
 *
 * With -P PID the server's CPU time (/proc/PID/stat) over the window is reported as % of one core.
 * Output: one JSON object on stdout.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_SESS 1024
#define MAX_WINDOW 1024
#define HIST_US 1000000

static const char *identity, *key_text;
static unsigned char key[256];
static unsigned key_len;

struct sess {
    int fd;
    SSL *ssl;
    int ready;       /* handshake done */
    int failed;
    uint16_t mid;
};

struct slot {
    int sess;
    uint8_t token[8];
    uint64_t sent_ns;
    int inflight, counted;
};

static struct sess sessions[MAX_SESS];
static struct slot slots[MAX_WINDOW];
static uint32_t hist[HIST_US + 1];
static struct sockaddr_in server;
static SSL_CTX *ctx;
static int ep;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static unsigned psk_cb(SSL *ssl, const char *hint, char *id, unsigned max_id, unsigned char *psk,
                       unsigned max_psk) {
    (void)ssl; (void)hint;
    if (strlen(identity) + 1 > max_id || key_len > max_psk) return 0;
    strcpy(id, identity);
    memcpy(psk, key, key_len);
    return key_len;
}

static double server_cpu(int pid) {
    if (pid <= 0) return -1;
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p) return -1;
    unsigned long utime = 0, stime = 0;
    /* fields after ')': state(3) ... utime(14) stime(15) */
    int field = 2;
    for (char *t = strtok(p + 1, " "); t; t = strtok(NULL, " ")) {
        field++;
        if (field == 14) utime = strtoul(t, NULL, 10);
        if (field == 15) { stime = strtoul(t, NULL, 10); break; }
    }
    return (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
}

static int open_session(struct sess *s, int index) {
    memset(s, 0, sizeof *s);
    s->fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    if (s->fd < 0 || connect(s->fd, (struct sockaddr *)&server, sizeof server) < 0) return -1;
    s->ssl = SSL_new(ctx);
    BIO *bio = BIO_new_dgram(s->fd, BIO_NOCLOSE);
    BIO_ctrl(bio, BIO_CTRL_DGRAM_SET_CONNECTED, 0, &server);
    SSL_set_bio(s->ssl, bio, bio);
    SSL_set_connect_state(s->ssl);
    s->mid = (uint16_t)rand();
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)index};
    epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &ev);
    return 0;
}

static void close_session(struct sess *s, int notify) {
    if (s->ssl) {
        if (notify && s->ready) SSL_shutdown(s->ssl);
        SSL_free(s->ssl);
    }
    if (s->fd >= 0) { epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL); close(s->fd); }
    s->ssl = NULL;
    s->fd = -1;
}

/* Drive a handshake; 1 done, 0 waiting, -1 failed. */
static int handshake(struct sess *s) {
    int r = SSL_do_handshake(s->ssl);
    if (r == 1) { s->ready = 1; return 1; }
    int e = SSL_get_error(s->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return 0;
    s->failed = 1;
    return -1;
}

static void dtls_timers(int count) {
    for (int i = 0; i < count; i++) {
        struct sess *s = &sessions[i];
        if (s->ssl && !s->ready) {
            struct timeval tv;
            if (DTLSv1_get_timeout(s->ssl, &tv) && tv.tv_sec == 0 && tv.tv_usec == 0)
                DTLSv1_handle_timeout(s->ssl);
        }
    }
}

static void send_request(int i, uint64_t t, int counted) {
    struct slot *sl = &slots[i];
    struct sess *s = &sessions[sl->sess];
    uint8_t msg[12];
    uint16_t mid = s->mid++;
    sl->token[0] = (uint8_t)(i >> 8);
    sl->token[1] = (uint8_t)i;
    for (int b = 2; b < 8; b++) sl->token[b] = (uint8_t)rand();
    msg[0] = 0x48;  /* version 1, CON, TKL 8 */
    msg[1] = 0x01;  /* GET */
    msg[2] = (uint8_t)(mid >> 8);
    msg[3] = (uint8_t)mid;
    memcpy(msg + 4, sl->token, 8);
    sl->sent_ns = t;
    sl->inflight = 1;
    sl->counted = counted;
    SSL_write(s->ssl, msg, sizeof msg);
}

static uint64_t percentile(uint64_t total, double q) {
    uint64_t rank = (uint64_t)(q * (double)total + 0.999999), seen = 0;
    if (rank == 0) rank = 1;
    for (uint64_t us = 0; us <= HIST_US; us++) {
        seen += hist[us];
        if (seen >= rank) return us;
    }
    return HIST_US;
}

int main(int argc, char **argv) {
    const char *mode = "requests", *ciphers = "PSK-AES128-CCM8";
    int nsess = 8, window = 16, concurrent = 8, pid = 0, timeout_ms = 1000;
    double duration = 5, warmup = 1;
    int opt;
    while ((opt = getopt(argc, argv, "m:k:w:c:d:W:T:u:K:C:P:")) != -1) {
        switch (opt) {
        case 'm': mode = optarg; break;
        case 'k': nsess = atoi(optarg); break;
        case 'w': window = atoi(optarg); break;
        case 'c': concurrent = atoi(optarg); break;
        case 'd': duration = atof(optarg); break;
        case 'W': warmup = atof(optarg); break;
        case 'T': timeout_ms = atoi(optarg); break;
        case 'u': identity = optarg; break;
        case 'K': key_text = optarg; break;
        case 'C': ciphers = optarg; break;
        case 'P': pid = atoi(optarg); break;
        default: fprintf(stderr, "bad arguments\n"); return 2;
        }
    }
    if (optind + 2 != argc || !identity || !key_text || nsess < 1 || nsess > MAX_SESS || window < 1 ||
        window > MAX_WINDOW || concurrent < 1 || concurrent > MAX_SESS) {
        fprintf(stderr, "usage: see the comment at the top of dtlsload.c\n");
        return 2;
    }
    key_len = (unsigned)strlen(key_text);
    memcpy(key, key_text, key_len);
    memset(&server, 0, sizeof server);
    server.sin_family = AF_INET;
    server.sin_port = htons((uint16_t)atoi(argv[optind + 1]));
    inet_pton(AF_INET, argv[optind], &server.sin_addr);
    srand((unsigned)now_ns());
    ctx = SSL_CTX_new(DTLS_client_method());
    SSL_CTX_set_psk_client_callback(ctx, psk_cb);
    SSL_CTX_set_cipher_list(ctx, ciphers);
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    ep = epoll_create1(0);
    struct epoll_event events[256];
    int handshakes_mode = strcmp(mode, "handshakes") == 0;
    int count = handshakes_mode ? concurrent : nsess;
    for (int i = 0; i < count; i++) sessions[i].fd = -1;
    uint64_t ok = 0, lost = 0, failed = 0, bad = 0, done_total = 0;
    const char *cipher = "";

    if (!handshakes_mode) {
        /* Establish every session first (not measured). */
        int ready = 0;
        uint64_t give_up = now_ns() + 10000000000ull;
        for (int i = 0; i < nsess; i++) {
            if (open_session(&sessions[i], i) < 0) { perror("socket"); return 1; }
            if (handshake(&sessions[i]) == 1) ready++;
        }
        while (ready < nsess && now_ns() < give_up) {
            int n = epoll_wait(ep, events, 256, 10);
            for (int j = 0; j < n; j++) {
                struct sess *s = &sessions[events[j].data.u32];
                if (!s->ready && !s->failed && handshake(s) == 1) ready++;
            }
            dtls_timers(nsess);
            for (int i = 0; i < nsess; i++)
                if (sessions[i].failed) { fprintf(stderr, "a handshake failed\n"); return 1; }
        }
        if (ready < nsess) { fprintf(stderr, "handshakes did not finish\n"); return 1; }
        cipher = SSL_get_cipher_name(sessions[0].ssl);
    }

    uint64_t start = now_ns();
    uint64_t window_start = start + (uint64_t)(warmup * 1e9);
    uint64_t window_end = window_start + (uint64_t)(duration * 1e9);
    uint64_t drain_end = window_end + (uint64_t)timeout_ms * 1000000u;
    double cpu_start = -1, cpu_end = -1;
    struct rusage ru0, ru1;
    int started = 0;

    if (handshakes_mode) {
        for (int i = 0; i < concurrent; i++) {
            if (open_session(&sessions[i], i) < 0) { perror("socket"); return 1; }
            handshake(&sessions[i]);
        }
    } else {
        for (int i = 0; i < window; i++) {
            slots[i].sess = i % nsess;
            send_request(i, now_ns(), 0);
        }
    }
    for (;;) {
        uint64_t t = now_ns();
        if (!started && t >= window_start) {
            started = 1;
            cpu_start = server_cpu(pid);
            getrusage(RUSAGE_SELF, &ru0);
        }
        if (t >= window_end && cpu_end < 0) {
            cpu_end = server_cpu(pid);
            getrusage(RUSAGE_SELF, &ru1);
        }
        if (t >= (handshakes_mode ? window_end : drain_end)) break;
        int n = epoll_wait(ep, events, 256, 5);
        t = now_ns();
        for (int j = 0; j < n; j++) {
            int index = (int)events[j].data.u32;
            struct sess *s = &sessions[index];
            if (handshakes_mode) {
                if (!s->ssl) continue;
                int r = handshake(s);
                if (r == 0) continue;
                if (r == 1) {
                    if (!*cipher) cipher = SSL_get_cipher_name(s->ssl);
                    done_total++;
                    if (t >= window_start && t < window_end) ok++;
                } else if (t >= window_start && t < window_end) {
                    failed++;
                }
                close_session(s, 1);
                if (t < window_end && open_session(s, index) == 0) handshake(s);
                continue;
            }
            uint8_t buf[2048];
            for (;;) {
                int len = SSL_read(s->ssl, buf, sizeof buf);
                if (len <= 0) break;
                if (len < 12 || (buf[0] & 0x0f) != 8 || (buf[0] >> 4 & 3) != 2) { bad++; continue; }
                int i = buf[4] << 8 | buf[5];
                if (i >= window || !slots[i].inflight || memcmp(buf + 4, slots[i].token, 8) != 0) {
                    bad++;
                    continue;
                }
                struct slot *sl = &slots[i];
                sl->inflight = 0;
                if (sl->counted) {
                    if (buf[1] == 0x45) {
                        ok++;
                        uint64_t us = (t - sl->sent_ns) / 1000;
                        hist[us > HIST_US ? HIST_US : us]++;
                    } else {
                        bad++;
                    }
                }
                if (t < window_end) send_request(i, t, t >= window_start);
            }
        }
        if (handshakes_mode) {
            dtls_timers(concurrent);
        } else {
            for (int i = 0; i < window; i++) {
                struct slot *sl = &slots[i];
                if (sl->inflight && t - sl->sent_ns > (uint64_t)timeout_ms * 1000000u) {
                    sl->inflight = 0;
                    if (sl->counted) lost++;
                    if (t < window_end) send_request(i, t, t >= window_start);
                }
            }
        }
    }
    if (cpu_end < 0) { cpu_end = server_cpu(pid); getrusage(RUSAGE_SELF, &ru1); }
    double own = (double)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec + ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec)
        + (double)(ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec + ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) / 1e6;
    if (handshakes_mode) {
        printf("{\"mode\": \"handshakes\", \"hps\": %.1f, \"handshakes\": %llu, \"failed\": %llu, "
               "\"cipher\": \"%s\", \"server_cpu\": %.1f, \"loadgen_cpu\": %.1f}\n",
               (double)ok / duration, (unsigned long long)ok, (unsigned long long)failed, cipher,
               cpu_start < 0 ? -1.0 : 100.0 * (cpu_end - cpu_start) / duration, 100.0 * own / duration);
    } else {
        printf("{\"mode\": \"requests\", \"rps\": %.1f, \"ok\": %llu, \"lost\": %llu, \"bad\": %llu, "
               "\"p50_ms\": %.3f, \"p99_ms\": %.3f, \"cipher\": \"%s\", \"server_cpu\": %.1f, "
               "\"loadgen_cpu\": %.1f}\n",
               (double)ok / duration, (unsigned long long)ok, (unsigned long long)lost,
               (unsigned long long)bad, percentile(ok, 0.5) / 1000.0, percentile(ok, 0.99) / 1000.0,
               cipher, cpu_start < 0 ? -1.0 : 100.0 * (cpu_end - cpu_start) / duration,
               100.0 * own / duration);
        for (int i = 0; i < nsess; i++) close_session(&sessions[i], 1);
    }
    (void)done_total;
    return 0;
}
