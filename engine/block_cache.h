// The bookkeeping of a caching allocator, apart from the device (kernels/allocator.cu wraps it around cudaMalloc;
// the CPU tests drive it with made-up addresses). Blocks of one size class are interchangeable; a freed block waits
// on its class's free list for the next request.
//
// Pools, for recorded device work (engine/graph.h): while a pool is open, every block handed out belongs to it (a
// cached shared block joins it), and a block of the pool freed goes back to the pool's own lists, so a recording's
// temporaries keep their addresses, reserved for its replays, until the pool is released. A block from outside the
// pool freed while the pool is open is held back too (the recorded kernels may read it) and returns with the pool's
// blocks on release. A pool's free and held blocks are reserved (reserved_bytes()): no tensor holds them, but nothing
// else may have them while the recording lives, so memory reports count them as in use.
#pragma once

#include <cstddef>
#include <map>
#include <unordered_map>
#include <vector>

#include "engine/error.h"

namespace llr {

class BlockCache {
 public:
  using FreeLists = std::map<size_t, std::vector<void*>>;

  // A cached block of class `cls` for a new request, or nullptr: the caller then gets fresh memory and reports it with
  // adopt(). While a pool is open, its own blocks first, then a shared one, which joins the pool (all work runs on
  // one stream, so whatever used the block before runs before the recorded work): a recording reuses the memory the
  // eager steps before it freed instead of asking the device for its whole working set again.
  void* take(size_t cls) {
    if (open_ >= 0) {
      if (void* p = pop(pools_.at(open_).free, cls)) {
        reserved_ -= cls;
        return p;
      }
    }
    void* p = pop(free_, cls);
    if (p) shared_ -= cls;
    if (p && open_ >= 0) owner_[p] = open_;
    return p;
  }
  // Fresh memory now in use: the open pool's, if one is open.
  void adopt(void* p) {
    if (open_ >= 0) owner_[p] = open_;
  }
  // A block no longer in use.
  void give_back(void* p, size_t cls) {
    auto it = owner_.find(p);
    if (it != owner_.end()) {
      pools_.at(it->second).free[cls].push_back(p);
      reserved_ += cls;
    } else if (open_ >= 0) {
      pools_.at(open_).held[cls].push_back(p);
      reserved_ += cls;
    } else {
      free_[cls].push_back(p);
      shared_ += cls;
    }
  }

  // Opens a new pool (one at a time) and returns its id.
  int open_pool() {
    LLR_CHECK(open_ < 0, "allocator: a memory pool is already open (recordings do not nest)");
    open_ = next_id_++;
    pools_[open_];
    return open_;
  }
  // New requests stop coming from the pool; its blocks stay reserved until release_pool.
  void close_pool(int id) {
    LLR_CHECK(open_ == id, "allocator: pool ", id, " is not the open one");
    open_ = -1;
  }
  // The pool's free and held blocks return to the shared lists; its blocks still in use return there when freed.
  void release_pool(int id) {
    if (open_ == id) open_ = -1;
    auto pool = pools_.find(id);
    if (pool == pools_.end()) return;
    for (auto* lists : {&pool->second.free, &pool->second.held}) {
      const size_t bytes = bytes_of(*lists);
      reserved_ -= bytes;
      shared_ += bytes;
      for (auto& [cls, blocks] : *lists) free_[cls].insert(free_[cls].end(), blocks.begin(), blocks.end());
    }
    for (auto it = owner_.begin(); it != owner_.end();) it = it->second == id ? owner_.erase(it) : std::next(it);
    pools_.erase(pool);
  }

  // Takes every block of the shared free lists (to return them to the device); pools keep theirs.
  FreeLists drain() {
    FreeLists out;
    out.swap(free_);
    shared_ = 0;
    return out;
  }
  // Bytes on the shared free lists and in every pool's lists (cached: not in use by a tensor).
  size_t cached_bytes() const { return shared_ + reserved_; }
  // Bytes on the shared free lists only: what any request may have.
  size_t shared_bytes() const { return shared_; }
  // Bytes on the pools' lists: reserved for their recordings' replays.
  size_t reserved_bytes() const { return reserved_; }
  bool pool_open() const { return open_ >= 0; }
  size_t live_pools() const { return pools_.size(); }

 private:
  struct Pool {
    FreeLists free, held;
  };
  static void* pop(FreeLists& lists, size_t cls) {
    auto it = lists.find(cls);
    if (it == lists.end() || it->second.empty()) return nullptr;
    void* p = it->second.back();
    it->second.pop_back();
    return p;
  }
  static size_t bytes_of(const FreeLists& lists) {
    size_t n = 0;
    for (const auto& [cls, blocks] : lists) n += cls * blocks.size();
    return n;
  }
  FreeLists free_;
  std::map<int, Pool> pools_;
  std::unordered_map<void*, int> owner_;
  int open_ = -1, next_id_ = 0;
  size_t shared_ = 0, reserved_ = 0;  // bytes on the shared lists and on the pools' lists
};

}  // namespace llr
