// Wide-ResNet-D-K (Zagoruyko & Komodakis) with pre-activation blocks. As in the official LLR code and the common
// PyTorch implementation (tools/reference/models.py, same parameter names), a block that changes width or stride
// applies its projection shortcut to the block's first activation; a block that does not adds its raw input.
#include <cmath>

#include "nets/model.h"

namespace llr::nets {

namespace {

class WideBlock {
 public:
  WideBlock(Registry& r, const std::string& name, int64_t in, int64_t out, int stride, Init init)
      : equal_(in == out && stride == 1),
        bn1_(r, name + ".bn1", in, init),
        conv1_(r, name + ".conv1", in, out, 3, stride, 1, init),
        bn2_(r, name + ".bn2", out, init),
        conv2_(r, name + ".conv2", out, out, 3, 1, 1, init) {
    if (!equal_) shortcut_ = Conv2d(r, name + ".convShortcut", in, out, 1, stride, 0, init);
  }

  Tensor forward(const Tensor& x, ForwardContext& ctx, Act act) {
    Tensor a = bn1_.forward_act(x, ctx, act);
    Tensor h = conv1_.forward(a, ctx);
    h = conv2_.forward(bn2_.forward_act(h, ctx, act), ctx);
    return add(equal_ ? x : shortcut_.forward(a, ctx), h);
  }

 private:
  bool equal_;
  BatchNorm bn1_;
  Conv2d conv1_;
  BatchNorm bn2_;
  Conv2d conv2_;
  Conv2d shortcut_;
};

class WideResNet final : public Model {
 public:
  WideResNet(int depth, int widen, Act act, int64_t classes, Init init)
      : Model("wrn-" + std::to_string(depth) + "-" + std::to_string(widen), act, classes) {
    LLR_CHECK(depth >= 10 && (depth - 4) % 6 == 0, "Wide-ResNet depth must be 6n + 4 with n >= 1, got ", depth);
    LLR_CHECK(widen >= 1, "Wide-ResNet widen factor must be positive, got ", widen);
    int n = (depth - 4) / 6;
    int64_t widths[4] = {16, 16 * widen, 32 * widen, 64 * widen};
    conv1_ = Conv2d(registry_, "conv1", 3, widths[0], 3, 1, 1, init);
    for (int g = 0; g < 3; ++g)
      for (int i = 0; i < n; ++i)
        blocks_.emplace_back(registry_, "block" + std::to_string(g + 1) + ".layer." + std::to_string(i),
                             i == 0 ? widths[g] : widths[g + 1], widths[g + 1], (i == 0 && g > 0) ? 2 : 1, init);
    bn_ = BatchNorm(registry_, "bn1", widths[3], init);
    fc_ = Linear(registry_, "fc", widths[3], classes, init);
  }

  Tensor forward(const Tensor& x, ForwardContext& ctx) override {
    ctx.next = 0;
    Tensor h = conv1_.forward(normalize_input(x, ctx), ctx);
    for (WideBlock& b : blocks_) h = b.forward(h, ctx, act_);
    h = bn_.forward_act(h, ctx, act_);
    return fc_.forward(global_avg_pool(h), ctx);
  }

 private:
  Conv2d conv1_;
  std::vector<WideBlock> blocks_;
  BatchNorm bn_;
  Linear fc_;
};

}  // namespace

std::unique_ptr<Model> make_wide_resnet(int depth, int widen, Act act, int64_t classes, Init init) {
  return std::make_unique<WideResNet>(depth, widen, act, classes, init);
}

}  // namespace llr::nets
