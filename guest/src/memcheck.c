/*
 * memcheck: memory integrity workload for the nimbus default guest.
 *
 *   memcheck [--sequential] [--no-verify] MIB RATE [STATUSFILE]
 *
 * Allocates MIB MiB and fills every 4 KiB page with a pattern derived from (page index,
 * generation 0). Then, forever, it walks all pages in passes ("rounds", numbered from
 * 0): in round r each page must hold exactly its generation-r pattern. Each visited page
 * is compared with it in full, word by word (a page with any difference counts once as
 * "stale"), and rewritten with its generation-(r+1) pattern. So a page that migration
 * or a snapshot restore lost (an old copy), mixed up with another page, or corrupted in
 * a single bit is caught on its next visit. Every page is visited exactly once per
 * round, in a fresh pseudo-random order (Fisher-Yates shuffle) unless --sequential.
 *
 * RATE is the target in MiB/s of pages walked (0: as fast as possible); memcheck sleeps
 * as needed. After a stall (the VM was paused, say) it makes up at most 1 s of lag.
 *
 * About every 0.5 s STATUSFILE (default /run/memcheck.status) is replaced atomically
 * (write STATUSFILE.tmp, rename) by one line:
 *   pages=<n> verified=<pages verified> stale=<stale pages> rounds=<full passes> rate_mib_s=<x>
 * with totals since start and the rate measured over the last interval. The first
 * mismatches are also described on stderr.
 *
 * --no-verify only rewrites pages (a pure memory dirtier, for /bin/dirty-mem): verified
 * and stale stay 0. The hidden --selftest-corrupt tests the checker: after the first full
 * pass it flips the lowest bit of the last byte of page MIB*128 (the second pass must
 * count stale=1), after the second it puts page MIB*64 back to its previous generation,
 * as a lost write would (the third pass must bring stale to 2, reported as a lost write).
 *
 * Exits 2 on bad usage, 1 on other setup errors; otherwise runs until SIGTERM or SIGINT,
 * then writes the final status and exits 0.
 */
#define _GNU_SOURCE
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define PAGE_SIZE 4096
#define PAGE_WORDS (PAGE_SIZE / sizeof(uint64_t))
#define PAGES_PER_MIB 256
#define STATUS_INTERVAL 0.5 /* seconds */
#define MAX_REPORTS 20      /* mismatches described on stderr */

static const char *status_path = "/run/memcheck.status";
static uint64_t npages;

/* Totals reported in the status file. */
static uint64_t verified, stale, rounds;

static volatile sig_atomic_t stop;
static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

/* splitmix64's finalizer: a bijection on 64-bit values that scrambles every bit. */
static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/*
 * The seed of a page's pattern. The key is unique per (page, generation) while both stay
 * below 2^32 (16 TiB of pages; 4 billion rounds) and mix64 is a bijection, so no two
 * (page, generation) pairs share a seed; the offset keeps mix64(0) = 0 away.
 */
static uint64_t seed_of(uint64_t page, uint64_t gen)
{
    return mix64((gen << 32 | page) + 0x9e3779b97f4a7c15ULL);
}

/*
 * Word i of a page with seed s is s ^ (i * odd constant): the words of a page all differ
 * (multiplying by an odd number is a bijection), so a page is never all zeros (which
 * migration would send as a zero page), and two different seeds differ in every word.
 */
static uint64_t word(uint64_t seed, uint64_t i)
{
    return seed ^ (i * 0xd6e8feb86659fd93ULL);
}

static void write_page(uint64_t *p, uint64_t seed)
{
    for (size_t i = 0; i < PAGE_WORDS; i++)
        p[i] = word(seed, i);
}

/* Compares the whole page with its expected pattern; returns the number of wrong words. */
static unsigned count_bad_words(const uint64_t *p, uint64_t seed)
{
    unsigned bad = 0;
    for (size_t i = 0; i < PAGE_WORDS; i++)
        bad += p[i] != word(seed, i);
    return bad;
}

/* Describes a mismatch on stderr, naming the likely cause when it is an old copy. */
static void report(const uint64_t *p, uint64_t page, uint64_t gen, unsigned bad)
{
    const char *what = "unknown content";
    size_t first = 0;

    while (p[first] == word(seed_of(page, gen), first))
        first++;
    if (gen > 0 && count_bad_words(p, seed_of(page, gen - 1)) == 0)
        what = "the previous generation (a lost write)";
    else if (count_bad_words(p, seed_of(page, gen + 1)) == 0)
        what = "the next generation";
    fprintf(stderr,
            "memcheck: page %" PRIu64 " round %" PRIu64 ": %u of %zu words wrong, first at "
            "byte %zu (expected %016" PRIx64 ", found %016" PRIx64 "); holds %s\n",
            page, gen, bad, PAGE_WORDS, first * sizeof(uint64_t),
            word(seed_of(page, gen), first), p[first], what);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_for(double secs)
{
    struct timespec ts = {(time_t)secs, (long)((secs - (double)(time_t)secs) * 1e9)};
    nanosleep(&ts, NULL); /* a signal cutting it short only makes one batch early */
}

/* Replaces the status file atomically; returns 0 on success. */
static int write_status(double rate_mib_s)
{
    char tmp[4096];
    FILE *f;
    int ok;

    if (snprintf(tmp, sizeof(tmp), "%s.tmp", status_path) >= (int)sizeof(tmp))
        return -1;
    f = fopen(tmp, "w");
    if (!f)
        return -1;
    fprintf(f, "pages=%" PRIu64 " verified=%" PRIu64 " stale=%" PRIu64 " rounds=%" PRIu64
               " rate_mib_s=%.1f\n",
            npages, verified, stale, rounds, rate_mib_s);
    ok = !ferror(f);
    if (fclose(f) != 0 || !ok || rename(tmp, status_path) != 0) {
        remove(tmp);
        return -1;
    }
    return 0;
}

/* xorshift64*: the pseudo-random numbers for the walk order. */
static uint64_t rng_state = 0x6e696d627573ULL;
static uint64_t rng(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dULL;
}

static void shuffle(uint32_t *order)
{
    for (uint64_t i = npages - 1; i > 0; i--) {
        uint64_t j = rng() % (i + 1);
        uint32_t t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
}

static int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    if (*s < '0' || *s > '9')
        return -1;
    *out = strtoull(s, &end, 10);
    return *end == '\0' ? 0 : -1;
}

static int usage(void)
{
    fprintf(stderr, "usage: memcheck [--sequential] [--no-verify] MIB RATE [STATUSFILE]\n"
                    "  MIB: memory to check, in MiB; RATE: MiB/s to walk, 0 = no limit\n"
                    "  status line (every 0.5 s, default /run/memcheck.status):\n"
                    "  pages=N verified=N stale=N rounds=N rate_mib_s=X\n");
    return 2;
}

int main(int argc, char **argv)
{
    int sequential = 0, verify = 1, corrupt = 0;
    uint64_t mib, rate, pos = 0, batch, done_ref = 0, done_status = 0, reports = 0;
    uint32_t *order = NULL;
    unsigned char *mem;
    double t_ref, t_status, t, last_rate = 0;
    int argi = 1;

    for (; argi < argc && strncmp(argv[argi], "--", 2) == 0; argi++) {
        if (strcmp(argv[argi], "--sequential") == 0)
            sequential = 1;
        else if (strcmp(argv[argi], "--no-verify") == 0)
            verify = 0;
        else if (strcmp(argv[argi], "--selftest-corrupt") == 0)
            corrupt = 1;
        else
            return usage();
    }
    if (argc - argi < 2 || argc - argi > 3 || parse_u64(argv[argi], &mib) != 0 ||
        parse_u64(argv[argi + 1], &rate) != 0 || mib == 0 || mib > (1ULL << 32) / PAGES_PER_MIB ||
        rate > 1000000)
        return usage();
    if (argc - argi == 3)
        status_path = argv[argi + 2];
    npages = mib * PAGES_PER_MIB;

    mem = mmap(NULL, npages * PAGE_SIZE, PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (mem == MAP_FAILED) {
        perror("memcheck: mmap");
        return 1;
    }
    if (!sequential) {
        order = malloc(npages * sizeof(*order));
        if (!order) {
            perror("memcheck: malloc");
            return 1;
        }
        for (uint64_t i = 0; i < npages; i++)
            order[i] = (uint32_t)i;
        shuffle(order);
    }
    for (uint64_t i = 0; i < npages; i++)
        write_page((uint64_t *)(mem + i * PAGE_SIZE), seed_of(i, 0));
    if (write_status(0) != 0) {
        perror("memcheck: cannot write the status file");
        return 1;
    }

    /* No SA_RESTART: a signal also ends a rate-limiting sleep at once. */
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    /* Pages per batch between clock reads: ~10 ms of work at the target rate, <= 1 MiB. */
    batch = rate ? rate * PAGES_PER_MIB / 100 : PAGES_PER_MIB;
    batch = batch < 1 ? 1 : batch > PAGES_PER_MIB ? PAGES_PER_MIB : batch;
    t_ref = t_status = now();

    while (!stop) {
        for (uint64_t b = 0; b < batch; b++) {
            /* Round r: every page holds generation r and is rewritten with r + 1. */
            uint64_t page = order ? order[pos] : pos;
            uint64_t *p = (uint64_t *)(mem + page * PAGE_SIZE);
            if (verify) {
                unsigned bad = count_bad_words(p, seed_of(page, rounds));
                verified++;
                if (bad) {
                    stale++;
                    if (reports++ < MAX_REPORTS)
                        report(p, page, rounds, bad);
                }
            }
            write_page(p, seed_of(page, rounds + 1));
            if (++pos == npages) {
                pos = 0;
                rounds++;
                if (order)
                    shuffle(order);
                /* --selftest-corrupt: one flipped bit, then one lost write. */
                if (corrupt && rounds == 1)
                    mem[(npages / 2) * PAGE_SIZE + PAGE_SIZE - 1] ^= 0x01;
                if (corrupt && rounds == 2)
                    write_page((uint64_t *)(mem + (npages / 4) * PAGE_SIZE),
                               seed_of(npages / 4, rounds - 1));
            }
        }
        done_ref += batch;
        done_status += batch;

        t = now();
        if (t - t_status >= STATUS_INTERVAL) {
            /* A failure here (e.g. a full /run) is not fatal; the next write retries. */
            last_rate = (double)done_status / PAGES_PER_MIB / (t - t_status);
            write_status(last_rate);
            t_status = t;
            done_status = 0;
        }
        if (rate) {
            /* When the next batch is due if we kept exactly to RATE since t_ref. */
            double due = t_ref + (double)done_ref / (double)(rate * PAGES_PER_MIB);
            if (due > t)
                sleep_for(due - t);
            else if (t - due > 1.0) {
                /* Far behind (paused, or RATE too high): start afresh, no burst. */
                t_ref = t;
                done_ref = 0;
            }
        }
    }
    /* Stopped by a signal: the exact final totals (and the last measured rate). */
    write_status(last_rate);
    return 0;
}
