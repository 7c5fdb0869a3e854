// Command demo is a small fake service with a memory leak, for trying memtrace out.
//
// An in-process load generator sends requests (no network) to a pool of workers. Each request
// allocates short-lived buffers (churn), looks its result up in a bounded LRU cache (steady
// memory), and registers the caller's session in a global map that is never cleaned up: the
// leak (the allocation marked SITE:leak). With -fixed, sessions expire after a second: the same
// service without the leak (a base line for `memtrace diff`).
//
// Usage:
//
//	demo [-duration D] [-rate R] [-workers W] [-fixed]
//
// It runs for -duration (default 60s) or until SIGINT/SIGTERM, and prints one line per second:
//
//	t=<seconds, one decimal>s requests=<n> sessions=<n> cache=<n> heap_alloc=<MiB> heap_objects=<n> goroutines=<n>
package main

import (
	"container/list"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	cacheCapacity   = 2048
	requestsPerUser = 8
	sessionBytes    = 2048
)

type request struct {
	id     int
	userID int
	path   string
}

// session is what leaks: one per user, kept forever.
type session struct {
	userID  int
	created time.Time
	history []string
	scratch []byte
}

var (
	sessionsMu sync.Mutex
	sessions   = map[int]*session{}
	// expireSessions is the -fixed flag; sessionCalls counts trackSession calls.
	expireSessions bool
	sessionCalls   int
)

// lruCache keeps at most cacheCapacity rendered pages; the oldest is evicted first.
type lruCache struct {
	mu      sync.Mutex
	order   *list.List
	entries map[string]*list.Element
}

type cacheEntry struct {
	key  string
	page []byte
}

var cache = &lruCache{order: list.New(), entries: map[string]*list.Element{}}

var paths = []string{"/", "/login", "/products", "/products/42", "/cart", "/checkout", "/search?q=gopher", "/account"}

func (c *lruCache) get(key string) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if element, ok := c.entries[key]; ok {
		c.order.MoveToFront(element)
		return element.Value.(*cacheEntry).page, true
	}
	return nil, false
}

//go:noinline
func (c *lruCache) put(key string, page []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.entries[key]; ok {
		return
	}
	c.entries[key] = c.order.PushFront(&cacheEntry{key: key, page: page}) // SITE:cacheEntry
	if c.order.Len() > cacheCapacity {
		oldest := c.order.Back()
		c.order.Remove(oldest)
		delete(c.entries, oldest.Value.(*cacheEntry).key)
	}
}

func (c *lruCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.order.Len()
}

// trackSession registers the user's session and never removes it: the leak.
//
//go:noinline
func trackSession(userID int, path string) {
	sessionsMu.Lock()
	defer sessionsMu.Unlock()
	s, ok := sessions[userID]
	if !ok {
		s = &session{userID: userID, created: time.Now(), scratch: make([]byte, sessionBytes)} // SITE:leak
		sessions[userID] = s
	}
	s.history = append(s.history, path) // SITE:sessionHistory
	sessionCalls++
	if expireSessions && sessionCalls%256 == 0 {
		for id, old := range sessions {
			if time.Since(old.created) > time.Second {
				delete(sessions, id)
			}
		}
	}
}

// render builds the response page; the buffer is garbage as soon as the request is done.
//
//go:noinline
func render(req request) []byte {
	buffer := make([]byte, 0, 512+(req.id%8)*448) // SITE:requestBuffer
	buffer = append(buffer, "<html><body>"...)
	buffer = append(buffer, req.path...)
	buffer = strconv.AppendInt(buffer, int64(req.userID), 10)
	buffer = append(buffer, "</body></html>"...)
	return buffer
}

func handle(req request) int {
	trackSession(req.userID, req.path)
	key := req.path + "?page=" + strconv.Itoa(req.id%4096) // SITE:cacheKey
	page, ok := cache.get(key)
	if !ok {
		page = render(req)
		cache.put(key, page)
	}
	return len(strings.TrimSpace(string(page)))
}

func main() {
	duration := flag.Duration("duration", 60*time.Second, "how long to run (0: until SIGINT or SIGTERM)")
	rate := flag.Int("rate", 2000, "requests per second")
	workers := flag.Int("workers", 4, "worker goroutines")
	flag.BoolVar(&expireSessions, "fixed", false, "expire sessions after a second (no leak)")
	flag.Parse()
	if flag.NArg() != 0 || *rate < 1 || *workers < 1 {
		fmt.Fprintln(os.Stderr, "usage: demo [-duration D] [-rate R] [-workers W] [-fixed]")
		os.Exit(2)
	}

	requests := make(chan request, 1024)
	var served atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < *workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for req := range requests {
				handle(req)
				served.Add(1)
			}
		}()
	}

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	var deadline <-chan time.Time
	if *duration > 0 {
		deadline = time.After(*duration)
	}

	const ticksPerSecond = 100
	load := time.NewTicker(time.Second / ticksPerSecond)
	defer load.Stop()
	report := time.NewTicker(time.Second)
	defer report.Stop()
	start := time.Now()
	nextID := 0

loop:
	for {
		select {
		case <-load.C:
			for i := 0; i < *rate/ticksPerSecond+1; i++ {
				requests <- request{id: nextID, userID: nextID / requestsPerUser, path: paths[nextID%len(paths)]}
				nextID++
			}
		case <-report.C:
			printStats(time.Since(start), served.Load())
		case <-stop:
			break loop
		case <-deadline:
			break loop
		}
	}
	close(requests)
	wg.Wait()
	printStats(time.Since(start), served.Load())
}

func printStats(elapsed time.Duration, served int64) {
	var stats runtime.MemStats
	runtime.ReadMemStats(&stats)
	sessionsMu.Lock()
	sessionCount := len(sessions)
	sessionsMu.Unlock()
	fmt.Printf("t=%.1fs requests=%d sessions=%d cache=%d heap_alloc=%.1fMiB heap_objects=%d goroutines=%d\n",
		elapsed.Seconds(), served, sessionCount, cache.len(), float64(stats.HeapAlloc)/(1<<20), stats.HeapObjects, runtime.NumGoroutine())
}
