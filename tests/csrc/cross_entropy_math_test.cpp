// Host driver for csrc/cross_entropy_math.h (compiled with g++ by tests/csrc/test_cross_entropy_math.py). Reads
// commands from stdin, prints results; the Python test compares them with float64 references. Emulates a CUDA block on
// the host: every thread id runs the kernels' per-thread loops over the same row, thread statistics are merged, and
// each output element's write count is recorded (the kernels must write every element exactly once).
//
// Commands (one per line):
//   block <kV> <n> <misalign_bytes> <threads> <target> <eps> <coef>  followed by n floats
//       -> "lse <v>", "sum <v>", "writes <min> <max>", "grad <n values>", "zero_writes <min> <max>"
//   combine <k> <lse_1> ... <lse_k>          -> "combine <v>"
//   loss <lse> <x_t> <sum_x> <eps> <inv_v>   -> "loss <v>"
//   bf16 <float bits as unsigned decimal>    -> "bf16 <bits>"
//   split <addr> <n> <elem_bytes>            -> "split <head> <nvec> <tail0>"
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "cross_entropy_math.h"

using namespace cross_entropy;

template <int kV>
struct HostRow {
  using Raw = std::array<float, kV>;
  const float* p;
  int64_t head;
  Raw load(int64_t i) const {
    Raw r;
    for (int k = 0; k < kV; ++k) r[k] = p[head + i * kV + k];
    return r;
  }
  void unpack(const Raw& r, float* x) const {
    for (int k = 0; k < kV; ++k) x[k] = r[k];
  }
  float scalar(int64_t j) const { return p[j]; }
};

template <int kV>
struct HostOut {
  float* p;
  int* writes;
  int64_t head;
  void store(int64_t j, float v) {
    p[j] = v;
    writes[j] += 1;
  }
  void store_vec(int64_t i, const float* v) {
    for (int k = 0; k < kV; ++k) store(head + i * kV + k, v[k]);
  }
  void store_vec_zero(int64_t i) {
    for (int k = 0; k < kV; ++k) store(head + i * kV + k, 0.0f);
  }
};

static void print_minmax(const char* name, const std::vector<int>& w) {
  int lo = 1 << 30, hi = -1;
  for (int c : w) {
    lo = c < lo ? c : lo;
    hi = c > hi ? c : hi;
  }
  if (w.empty()) lo = hi = 1;
  std::printf("%s %d %d\n", name, lo, hi);
}

template <int kV>
static void run_block(int64_t n, uint64_t mis, int64_t nt, int64_t t, float eps, float coef,
                      const std::vector<float>& x) {
  constexpr int kUnroll = 4;
  const int elem_bytes = 16 / kV;
  const RowSplit sp = split_row(mis, n, elem_bytes);
  const HostRow<kV> row{x.data(), sp.head};
  RowStat st = stat_init();
  float sum_x = 0.0f;
  for (int64_t tid = 0; tid < nt; ++tid) {
    RowStat ts = stat_init();
    float tsum = 0.0f;
    thread_row_stats<kV, kUnroll, true>(row, sp, n, tid, nt, ts, tsum);
    st = stat_merge(st, ts);
    sum_x += tsum;
  }
  const float lse = stat_lse(st);
  std::printf("lse %.9g\nsum %.9g\n", lse, sum_x);
  std::vector<float> g(n, NAN);
  std::vector<int> w(n, 0);
  HostOut<kV> out{g.data(), w.data(), sp.head};
  for (int64_t tid = 0; tid < nt; ++tid)
    thread_row_grad<kV, kUnroll>(row, out, sp, n, t, lse * kLog2e, eps, eps / static_cast<float>(n), coef, tid, nt);
  print_minmax("writes", w);
  std::printf("grad");
  for (float v : g) std::printf(" %.9g", v);
  std::printf("\n");
  std::vector<float> z(n, NAN);
  std::vector<int> zw(n, 0);
  HostOut<kV> zout{z.data(), zw.data(), sp.head};
  for (int64_t tid = 0; tid < nt; ++tid) thread_row_zero(zout, sp, n, tid, nt);
  for (float v : z)
    if (v != 0.0f) zw[0] = -1000;  // flags a non-zero (or unwritten NaN) element
  print_minmax("zero_writes", zw);
}

int main() {
  std::string cmd;
  while (std::cin >> cmd) {
    if (cmd == "block") {
      int kv;
      int64_t n, nt, t;
      uint64_t mis;
      float eps, coef;
      std::cin >> kv >> n >> mis >> nt >> t >> eps >> coef;
      std::vector<float> x(n);
      for (auto& v : x) {
        std::string s;
        std::cin >> s;
        v = std::strtof(s.c_str(), nullptr);  // accepts "inf", "-inf"
      }
      if (kv == 8) {
        run_block<8>(n, mis, nt, t, eps, coef, x);
      } else {
        run_block<4>(n, mis, nt, t, eps, coef, x);
      }
    } else if (cmd == "combine") {
      int k;
      std::cin >> k;
      std::vector<float> v(k);
      for (auto& e : v) std::cin >> e;
      std::printf("combine %.9g\n", combine_lse(v.data(), k));
    } else if (cmd == "loss") {
      float lse, xt, sx, eps, inv;
      std::cin >> lse >> xt >> sx >> eps >> inv;
      std::printf("loss %.9g\n", token_loss(lse, xt, sx, eps, inv));
    } else if (cmd == "bf16") {
      uint32_t bits;
      std::cin >> bits;
      float f;
      std::memcpy(&f, &bits, sizeof(f));
      std::printf("bf16 %u\n", static_cast<unsigned>(float_to_bf16_bits(f)));
    } else if (cmd == "split") {
      uint64_t addr;
      int64_t n;
      int eb;
      std::cin >> addr >> n >> eb;
      const RowSplit sp = split_row(addr, n, eb);
      std::printf("split %lld %lld %lld\n", static_cast<long long>(sp.head), static_cast<long long>(sp.nvec),
                  static_cast<long long>(sp.tail0));
    } else {
      std::fprintf(stderr, "unknown command %s\n", cmd.c_str());
      return 2;
    }
  }
  return 0;
}
