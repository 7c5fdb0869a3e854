// Command leaks is memtrace's leak-detection corpus: one program, several workloads chosen with
// -pattern. Seven patterns leak heap memory the way real programs do, at a steady rate; three
// controls hold memory that must NOT be reported as a leak. Every pattern also runs the same
// background churn of short-lived objects, so a leak has to be told apart from noise.
//
// Usage:
//
//	leaks -pattern NAME [-duration D] [-rate R]
//	leaks -list
//
//	-pattern NAME  the workload (required), one of the names below
//	-duration D    stop after D (default 30s; 0: run until SIGTERM or SIGINT)
//	-rate R        multiply the pattern's work per tick by R (default 1): the leak rate of a
//	               leaky pattern, the insert rate of boundedcache, the churn rate of churn,
//	               the build speed of tableonce. The background churn does not scale, and
//	               neither do fixed sizes (cache capacity, table size).
//	-list          print "PATTERN <name> leak" or "PATTERN <name> control" per pattern, exit 0
//
// Output on stdout:
//
//	READY <pid>                  once, before the workload starts
//	t=<s> pattern=<name> heap_alloc=<bytes> goroutines=<n> heap_live=<bytes> num_gc=<n>
//	                             once per second, t = 1, 2, ...: runtime.MemStats.HeapAlloc,
//	                             runtime.NumGoroutine() (2: main and os/signal's watcher), the
//	                             runtime/metrics value /gc/heap/live:bytes (the heap marked
//	                             live by the last GC: a leak shows as its steady growth,
//	                             without HeapAlloc's sawtooth; it only changes at a GC, so it
//	                             lags, e.g. by ~10 s after tableonce's build) and
//	                             runtime.MemStats.NumGC
//	DONE                         at the end (after D, or on SIGTERM or SIGINT); exit code 0
//
// The workload runs in ticks of 10 ms on the main goroutine (no other goroutines are started).
// A tick that is due late runs at once, so the rates below hold per second of wall-clock time
// even when the process is slowed down. Random choices come from a fixed-seed generator.
// Rates are nominal at -rate 1, in allocated bytes (size classes) per second.
//
// Background churn, every pattern (site churn): 8 []byte per tick of 512-11776 bytes, about
// 4.9 MB/s; each stays reachable only until 64 more churn objects have been allocated.
//
// Leaky patterns. Each leaking allocation is on the line marked // SITE:<pattern>; lines
// marked // SITE:<pattern>_<suffix> allocate the leak's smaller bookkeeping (map tables, slice
// backing arrays, keys, closures, channels), which also only grows.
//
//	globalmap     a session table: 5 sessions per tick (a 2032-byte struct with pointers, size
//	              class 2048) are added to a global map and never deleted: ~1.0 MB/s, plus the
//	              map's growth (globalmap_index).
//	subslice      a message handler: each tick allocates a 64 KiB message buffer (6.5 MB/s at
//	              the site); for every 8th message the 64-byte header sub-slice is kept in a
//	              global audit list, which pins the whole 64 KiB buffer: ~820 KB/s, 12.5
//	              buffers per second, the other 7 of 8 buffers die young at the same site.
//	append        an in-memory journal: 6 records per tick (a 1016-byte struct with pointers,
//	              class 1024) are appended to a global []*record: ~615 KB/s, plus the
//	              backing array (append_grow).
//	closures      a callback registry: 2 requests per tick each allocate a 4096-byte buffer
//	              and register a closure capturing it in a global handler list that is never
//	              pruned: ~820 KB/s, plus 48-byte closures and the list (closures_registry).
//	channels      abandoned replies: 1 call per tick creates a reply channel with a buffer of
//	              4 (channels_chan) and records it in a global in-flight list
//	              (channels_list); the backend (synchronously, no goroutine) sends 4 reply
//	              chunks of 1024 bytes into it, but the caller has given up and never reads,
//	              and the list is only cleaned up on a read: ~410 KB/s of chunks.
//	cachenoevict  a response cache with a TTL that is only checked on lookup, never enforced
//	              by eviction; keys (request paths with a unique id, cachenoevict_key) never
//	              repeat: 6 entries per tick with a 1536-byte body and a 48-byte entry (both
//	              on the marked line): ~950 KB/s, plus the map (cachenoevict_index).
//	stringintern  an interning table for log labels: 24 labels per tick, each a 200-byte
//	              string (class 208) that includes a unique request id, are interned into a
//	              global map that only grows: ~500 KB/s, plus the map (stringintern_index).
//
// Controls (must not be reported as leaks):
//
//	boundedcache  an LRU cache of fixed capacity 1600: 8 inserts per tick of new keys plus 8
//	              lookups of recent keys; each entry is a 2024-byte struct (class 2048).
//	              It is full after 2 s (3.3 MB live); from then on every insert evicts the
//	              least recently used entry, so live memory stays flat while entries keep
//	              being allocated (1.6 MB/s) and dying after about 2 s.
//	churn         only short-lived churn: 48 more []byte per tick of 1-16 KiB through the
//	              churn site, about 42 MB/s in all; nothing is retained.
//	tableonce     a lookup table of 16384 rows of 4096 bytes (64 MiB), built at 82 rows per
//	              tick during the first 2 s, then only read, never changed or freed.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"runtime/metrics"
	"strconv"
	"syscall"
	"time"
)

const (
	tick           = 10 * time.Millisecond
	ticksPerSecond = int(time.Second / tick)
)

// pattern is one workload. Every tick, unit runs quota(t, perTick) times, with seq counting
// its calls from 0.
type pattern struct {
	name    string
	leaks   bool
	perTick float64
	unit    func(seq int)
}

var patterns = []pattern{
	{"globalmap", true, 5, openSession},
	{"subslice", true, 1, receiveMessage},
	{"append", true, 6, appendRecord},
	{"closures", true, 2, handleRequest},
	{"channels", true, 1, startCall},
	{"cachenoevict", true, 6, cacheResponse},
	{"stringintern", true, 24, internLabel},
	{"boundedcache", false, 8, lruRequest},
	{"churn", false, 48, heavyChurn},
	{"tableonce", false, 82, addRow},
}

var (
	// rate is the -rate flag.
	rate = 1.0
	// now is the current tick, the logical clock of the cache patterns.
	now int
	// rngState is the state of random's generator; the seed is fixed.
	rngState uint64 = 0x9e3779b97f4a7c15
	// checksum sinks values read back from retained data, so the reads are not optimized away.
	checksum int
)

// random returns a deterministic pseudo-random number in [0, n).
func random(n int) int {
	rngState = rngState*6364136223846793005 + 1442695040888963407
	return int((rngState >> 33) % uint64(n))
}

// quota is how many units of perTick (scaled by rate) tick t does: the running total after
// tick t is floor((t+1) * perTick * rate).
func quota(t int, perTick float64) int {
	return int(float64(t+1)*perTick*rate) - int(float64(t)*perTick*rate)
}

// --- Background churn ---

const (
	churnPerTick = 8
	churnRingLen = 64
)

var (
	churnRing [churnRingLen][]byte
	churnNext int
)

//go:noinline
func churn(size int) {
	b := make([]byte, size) // SITE:churn
	b[size-1] = byte(size)
	churnRing[churnNext%churnRingLen] = b
	churnNext++
}

func backgroundChurn() {
	for i := 0; i < churnPerTick; i++ {
		churn(512 + random(11265))
	}
}

// --- globalmap ---

type session struct {
	id      uint64
	user    string
	created int64
	state   [2000]byte
}

var (
	sessions = make(map[uint64]*session)
	users    = []string{"alice", "bob", "carol", "dave", "erin", "frank"}
)

//go:noinline
func openSession(seq int) {
	s := &session{id: uint64(seq), user: users[seq%len(users)], created: int64(now)} // SITE:globalmap
	s.state[seq%len(s.state)] = 1
	sessions[s.id] = s // SITE:globalmap_index
}

// --- subslice ---

const (
	messageSize = 64 << 10
	headerSize  = 64
	auditEvery  = 8
)

// auditLog keeps the headers of audited messages; each header is a sub-slice of its message.
var auditLog [][]byte

//go:noinline
func receiveMessage(seq int) {
	msg := make([]byte, messageSize) // SITE:subslice
	for i := 0; i < headerSize; i++ {
		msg[i] = byte(seq + i)
	}
	msg[messageSize-1] = byte(seq)
	checksum += int(msg[seq%headerSize]) + int(msg[messageSize-1])
	if seq%auditEvery == 0 {
		auditLog = append(auditLog, msg[:headerSize]) // SITE:subslice_list
	}
}

// --- append ---

type record struct {
	seq     int64
	kind    string
	payload [992]byte
}

var (
	journal     []*record
	recordKinds = []string{"create", "update", "delete", "read"}
)

//go:noinline
func appendRecord(seq int) {
	r := &record{seq: int64(seq), kind: recordKinds[seq%len(recordKinds)]} // SITE:append
	r.payload[seq%len(r.payload)] = byte(seq)
	journal = append(journal, r) // SITE:append_grow
}

// --- closures ---

const requestBufferSize = 4096

type eventHandler func(event int) int

// handlers is the callback registry; nothing ever unregisters a handler.
var handlers []eventHandler

//go:noinline
func handleRequest(seq int) {
	buf := make([]byte, requestBufferSize) // SITE:closures
	buf[seq%requestBufferSize] = byte(seq)
	id := seq
	handlers = append(handlers, func(event int) int { return int(buf[event%len(buf)]) + id }) // SITE:closures_registry
	// Dispatch an event to one registered handler.
	checksum += handlers[random(len(handlers))](seq)
}

// --- channels ---

const chunksPerReply = 4

type replyChunk struct {
	seq  int64
	data [1016]byte
}

// inflight holds the reply channel of every call that has not been read yet; a call is
// removed only when its caller reads the reply, which never happens.
var inflight []chan *replyChunk

//go:noinline
func startCall(seq int) {
	replies := make(chan *replyChunk, chunksPerReply) // SITE:channels_chan
	inflight = append(inflight, replies)              // SITE:channels_list
	for i := 0; i < chunksPerReply; i++ {
		c := &replyChunk{seq: int64(seq*chunksPerReply + i)} // SITE:channels
		c.data[i] = byte(seq)
		replies <- c
	}
}

// --- cachenoevict ---

const (
	responseSize = 1536
	cacheTTL     = 5 * ticksPerSecond
)

type cacheEntry struct {
	key     string
	expires int // in ticks
	body    []byte
}

// responseCache has a TTL, but expired entries are only ignored by get, never removed.
type responseCache struct {
	ttl     int
	entries map[string]*cacheEntry
}

var (
	responses    = &responseCache{ttl: cacheTTL, entries: make(map[string]*cacheEntry)}
	lookupBuffer []byte
)

func (c *responseCache) get(key string) ([]byte, bool) {
	e, ok := c.entries[key]
	if !ok || now >= e.expires {
		return nil, false
	}
	return e.body, true
}

//go:noinline
func (c *responseCache) put(key string, seq int) {
	e := &cacheEntry{key: key, expires: now + c.ttl, body: make([]byte, responseSize)} // SITE:cachenoevict
	e.body[seq%responseSize] = byte(seq)
	c.entries[key] = e // SITE:cachenoevict_index
}

//go:noinline
func cacheResponse(seq int) {
	key := "/api/v1/items/" + strconv.Itoa(seq) + "?page=1" // SITE:cachenoevict_key
	if _, ok := responses.get(key); !ok {
		responses.put(key, seq)
	}
	// Look up an older response without allocating the key: a hit while it has not expired.
	if seq >= 300 {
		b := append(lookupBuffer[:0], "/api/v1/items/"...)
		b = strconv.AppendInt(b, int64(seq-300), 10)
		b = append(b, "?page=1"...)
		lookupBuffer = b
		if body, ok := responses.entries[string(b)]; ok && now < body.expires {
			checksum += int(body.body[0])
		}
	}
}

// --- stringintern ---

const labelSize = 200

var (
	internTable  = make(map[string]string)
	labelScratch = make([]byte, 0, labelSize)
	services     = []string{"billing", "search", "auth", "catalog", "checkout"}
	lastLabel    string
)

//go:noinline
func intern(b []byte) string {
	if s, ok := internTable[string(b)]; ok {
		return s
	}
	s := string(b)     // SITE:stringintern
	internTable[s] = s // SITE:stringintern_index
	return s
}

// label builds, in labelScratch, the label of request id: labelSize bytes.
func label(id int) []byte {
	b := append(labelScratch[:0], "tenant="...)
	b = strconv.AppendInt(b, int64(id%97), 10)
	b = append(b, " service="...)
	b = append(b, services[id%len(services)]...)
	b = append(b, " route=/api/v2/orders/"...)
	b = strconv.AppendInt(b, int64(id%1000), 10)
	b = append(b, " request="...)
	b = strconv.AppendUint(b, uint64(id)*0x9e3779b97f4a7c15, 16)
	b = append(b, ' ')
	for len(b) < labelSize {
		b = append(b, '.')
	}
	labelScratch = b
	return b
}

func internLabel(seq int) {
	lastLabel = intern(label(seq))
	// An older label is found in the table: no allocation.
	lastLabel = intern(label(seq / 2))
}

// --- boundedcache (control) ---

const lruCapacity = 1600

type lruEntry struct {
	key        uint64
	prev, next *lruEntry
	value      [2000]byte
}

// lruCache is a least-recently-used cache with a fixed capacity; head is the most recent.
type lruCache struct {
	capacity   int
	index      map[uint64]*lruEntry
	head, tail *lruEntry
}

var lru = &lruCache{capacity: lruCapacity, index: make(map[uint64]*lruEntry, lruCapacity+1)}

func (c *lruCache) unlink(e *lruEntry) {
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		c.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		c.tail = e.prev
	}
	e.prev, e.next = nil, nil
}

func (c *lruCache) pushFront(e *lruEntry) {
	e.next = c.head
	if c.head != nil {
		c.head.prev = e
	}
	c.head = e
	if c.tail == nil {
		c.tail = e
	}
}

func (c *lruCache) get(key uint64) (*lruEntry, bool) {
	e, ok := c.index[key]
	if ok {
		c.unlink(e)
		c.pushFront(e)
	}
	return e, ok
}

//go:noinline
func (c *lruCache) put(key uint64) {
	e := &lruEntry{key: key} // SITE:boundedcache
	e.value[key%uint64(len(e.value))] = byte(key)
	c.index[key] = e // SITE:boundedcache_index
	c.pushFront(e)
	if len(c.index) > c.capacity {
		oldest := c.tail
		c.unlink(oldest)
		delete(c.index, oldest.key)
	}
}

func lruRequest(seq int) {
	lru.put(uint64(seq))
	if e, ok := lru.get(uint64(seq - random(lruCapacity/2) - 1)); ok {
		checksum += int(e.value[0])
	}
}

// --- churn (control) ---

func heavyChurn(int) {
	churn(1024 + random(15361))
}

// --- tableonce (control) ---

const (
	tableRows = 16384
	rowSize   = 4096
)

var table = make([][]byte, 0, tableRows)

//go:noinline
func addRow(seq int) {
	if len(table) < tableRows {
		row := make([]byte, rowSize) // SITE:tableonce
		row[seq%rowSize] = byte(seq)
		table = append(table, row)
		return
	}
	// Once built, the table is only read.
	checksum += int(table[random(tableRows)][seq%rowSize])
}

// --- main ---

var liveSample = []metrics.Sample{{Name: "/gc/heap/live:bytes"}}

func report(seconds int, name string) {
	var stats runtime.MemStats
	runtime.ReadMemStats(&stats)
	metrics.Read(liveSample)
	var live uint64
	if liveSample[0].Value.Kind() == metrics.KindUint64 {
		live = liveSample[0].Value.Uint64()
	}
	fmt.Printf("t=%d pattern=%s heap_alloc=%d goroutines=%d heap_live=%d num_gc=%d\n",
		seconds, name, stats.HeapAlloc, runtime.NumGoroutine(), live, stats.NumGC)
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: leaks -pattern NAME [-duration D] [-rate R] | leaks -list")
	fmt.Fprint(os.Stderr, "patterns:")
	for _, p := range patterns {
		fmt.Fprintf(os.Stderr, " %s", p.name)
	}
	fmt.Fprintln(os.Stderr)
	os.Exit(2)
}

func done() {
	fmt.Println("DONE")
	os.Exit(0)
}

func main() {
	name := flag.String("pattern", "", "the workload to run")
	duration := flag.Duration("duration", 30*time.Second, "stop after this long (0: run until SIGTERM or SIGINT)")
	flag.Float64Var(&rate, "rate", 1, "scale the pattern's work per tick")
	list := flag.Bool("list", false, "list the patterns and exit")
	flag.Parse()
	if flag.NArg() != 0 {
		usage()
	}
	if *list {
		for _, p := range patterns {
			kind := "control"
			if p.leaks {
				kind = "leak"
			}
			fmt.Printf("PATTERN %s %s\n", p.name, kind)
		}
		return
	}
	var chosen *pattern
	for i := range patterns {
		if patterns[i].name == *name {
			chosen = &patterns[i]
		}
	}
	if chosen == nil {
		if *name != "" {
			fmt.Fprintf(os.Stderr, "leaks: unknown pattern %q\n", *name)
		}
		usage()
	}
	if !(rate > 0) || *duration < 0 {
		fmt.Fprintln(os.Stderr, "leaks: -rate must be positive and -duration not negative")
		os.Exit(2)
	}
	durationTicks := 0 // forever
	if *duration > 0 {
		durationTicks = int((*duration + tick - 1) / tick)
	}

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	timer := time.NewTimer(time.Hour)
	timer.Stop()

	// os.Stdout is unbuffered: the line is written before the workload starts.
	fmt.Printf("READY %d\n", os.Getpid())
	start := time.Now()
	seq := 0
	for t := 0; durationTicks == 0 || t < durationTicks; t++ {
		now = t
		backgroundChurn()
		for n := quota(t, chosen.perTick); n > 0; n-- {
			chosen.unit(seq)
			seq++
		}
		if (t+1)%ticksPerSecond == 0 {
			report((t+1)/ticksPerSecond, chosen.name)
		}
		wait := time.Until(start.Add(time.Duration(t+1) * tick))
		if wait <= 0 {
			select {
			case <-stop:
				done()
			default:
			}
			continue
		}
		timer.Reset(wait)
		select {
		case <-timer.C:
		case <-stop:
			done()
		}
	}
	done()
}
