/* Give back to the system the free pools inside pymalloc's arenas (CPython 3.11).
 *
 * Why this exists: pymalloc, CPython's allocator for small objects, takes memory from the
 * system in 1 MiB arenas of 16 KiB pools and returns an arena only when every block in it is
 * free. After a busy spell (5,000 calls) the few objects that live on (a call still up, a
 * timer handle, a cached header) are scattered over dozens of arenas, whose free pools stay
 * resident: 72 MiB of them were measured after 5,000 calls, where the edge idles at 50 MiB.
 * CPython 3.11 has no way to give part of an arena back, and nothing else does it, so this
 * module does, in two parts:
 *
 * - `install()` wraps pymalloc's arena allocator (PyObject_SetArenaAllocator, a public API)
 *   to note the address of every arena allocated from then on;
 * - `give_back()` walks those arenas' pools and, for each empty one, tells the kernel it may
 *   drop the pool's pages after the first (madvise MADV_DONTNEED): the first page holds the
 *   pool's header, which pymalloc's lists of free pools link through. The pool's size class
 *   is set to pymalloc's own "never used" mark (DUMMY_SIZE_IDX), so the next time pymalloc
 *   takes the pool it initialises it afresh (as it does a pool carved from a new arena)
 *   instead of following a free list that was in the dropped pages. A dropped page comes back
 *   as zeros when the pool is written again.
 *
 * A standalone edge runs on glibc's malloc by default (edge/runtime/allocator.py), which
 * gives memory back without this; it is for an edge run with EDGE_ALLOCATOR=pymalloc.
 *
 * It reads and writes CPython's pool header, whose layout is private: `give_back` refuses to
 * run on any other version than the one this file describes (3.11), and the edge calls it
 * only with the GIL held, as pymalloc requires. With PYTHONMALLOC=malloc pymalloc allocates
 * no arenas and there is nothing to walk.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

#if PY_VERSION_HEX < 0x030B0000 || PY_VERSION_HEX >= 0x030C0000
#error "edge/_arenas.c describes CPython 3.11's pymalloc"
#endif

/* Objects/obmalloc.c, CPython 3.11: a pool's header, the pool size on 64-bit builds
 * (USE_LARGE_POOLS) and the size-class mark of a pool that holds no size class yet. */
struct pool_header {
    union {
        void *padding;
        unsigned int count; /* blocks allocated in the pool */
    } ref;
    void *freeblock;
    struct pool_header *nextpool;
    struct pool_header *prevpool;
    unsigned int arenaindex;
    unsigned int szidx;
    unsigned int nextoffset; /* 0 only in a pool pymalloc has never used */
    unsigned int maxnextoffset;
};
#define POOL_SIZE ((uintptr_t)1 << 14)
#define DUMMY_SIZE_IDX 0xffff

static PyObjectArenaAllocator wrapped;
static int installed;
static void **arenas;      /* the arenas allocated since `install` and not yet freed */
static size_t arena_count, arena_room;
static size_t arena_size;  /* as pymalloc asks for it (1 MiB) */

static void *
arena_alloc(void *ctx, size_t size)
{
    void *address = wrapped.alloc(wrapped.ctx, size);
    if (address == NULL) {
        return NULL;
    }
    if (arena_count == arena_room) {
        /* The raw domain is the C library's malloc: no recursion into pymalloc. */
        size_t room = arena_room ? arena_room * 2 : 256;
        void **grown = PyMem_RawRealloc(arenas, room * sizeof(void *));
        if (grown == NULL) {
            return address; /* not noted: it is simply never walked */
        }
        arenas = grown;
        arena_room = room;
    }
    arenas[arena_count++] = address;
    arena_size = size;
    return address;
}

static void
arena_free(void *ctx, void *address, size_t size)
{
    for (size_t i = 0; i < arena_count; i++) {
        if (arenas[i] == address) {
            arenas[i] = arenas[--arena_count];
            break;
        }
    }
    wrapped.free(wrapped.ctx, address, size);
}

static PyObject *
install(PyObject *module, PyObject *unused)
{
    if (!installed) {
        PyObjectArenaAllocator ours = {NULL, arena_alloc, arena_free};
        PyObject_GetArenaAllocator(&wrapped);
        PyObject_SetArenaAllocator(&ours);
        installed = 1;
    }
    Py_RETURN_NONE;
}

static PyObject *
give_back(PyObject *module, PyObject *unused)
{
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    unsigned long long given = 0;
    size_t pools = 0;
    if (page == 0 || page >= POOL_SIZE) {
        return Py_BuildValue("(nK)", (Py_ssize_t)0, given);
    }
    for (size_t i = 0; i < arena_count; i++) {
        uintptr_t base = (uintptr_t)arenas[i];
        uintptr_t end = base + arena_size;
        /* pymalloc's pools start at the first pool-aligned address of the arena. */
        for (uintptr_t at = (base + POOL_SIZE - 1) & ~(POOL_SIZE - 1); at + POOL_SIZE <= end;
             at += POOL_SIZE) {
            struct pool_header *pool = (struct pool_header *)at;
            if (pool->ref.count != 0 || pool->nextoffset == 0 || pool->szidx == DUMMY_SIZE_IDX) {
                continue; /* in use, never used, or given back already */
            }
            pool->szidx = DUMMY_SIZE_IDX;
            if (madvise((void *)(at + page), POOL_SIZE - page, MADV_DONTNEED) == 0) {
                given += POOL_SIZE - page;
                pools++;
            }
        }
    }
    return Py_BuildValue("(nK)", (Py_ssize_t)pools, given);
}

static PyObject *
arena_total(PyObject *module, PyObject *unused)
{
    return PyLong_FromSize_t(arena_count);
}

static PyMethodDef methods[] = {
    {"install", install, METH_NOARGS,
     "Note every pymalloc arena allocated from now on (idempotent)."},
    {"give_back", give_back, METH_NOARGS,
     "Drop the pages of the empty pools in the noted arenas but each pool's first: "
     "(pools, bytes)."},
    {"arenas", arena_total, METH_NOARGS, "How many noted arenas are allocated now."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "edge._arenas",
    "Free pools inside pymalloc's arenas given back to the system (see the C source).", -1,
    methods,
};

PyMODINIT_FUNC
PyInit__arenas(void)
{
    return PyModule_Create(&module);
}
