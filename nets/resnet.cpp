// Bottleneck ResNets (He et al. 2016) for 224x224 ImageNet inputs, laid out and named as torchvision's resnet50 /
// resnet101 / resnet152 (stride on the 3x3 convolution; projection shortcut "downsample" = 1x1 conv + batch norm):
// a 7x7 stride-2 stem, 3x3 stride-2 max pooling, four stages, global average pooling, a linear layer.
#include "nets/model.h"

namespace llr::nets {

namespace {

class Bottleneck {
 public:
  Bottleneck(Registry& r, const std::string& name, int64_t in, int64_t width, int stride, Init init)
      : conv1_(r, name + ".conv1", in, width, 1, 1, 0, init),
        bn1_(r, name + ".bn1", width, init),
        conv2_(r, name + ".conv2", width, width, 3, stride, 1, init),
        bn2_(r, name + ".bn2", width, init),
        conv3_(r, name + ".conv3", width, width * 4, 1, 1, 0, init),
        bn3_(r, name + ".bn3", width * 4, init),
        projection_(stride != 1 || in != width * 4) {
    if (projection_) {
      down_conv_ = Conv2d(r, name + ".downsample.0", in, width * 4, 1, stride, 0, init);
      down_bn_ = BatchNorm(r, name + ".downsample.1", width * 4, init);
    }
  }

  Tensor forward(const Tensor& x, ForwardContext& ctx, Act act) {
    Tensor h = bn1_.forward_act(conv1_.forward(x, ctx), ctx, act);
    h = bn2_.forward_act(conv2_.forward(h, ctx), ctx, act);
    h = bn3_.forward(conv3_.forward(h, ctx), ctx);
    Tensor skip = projection_ ? down_bn_.forward(down_conv_.forward(x, ctx), ctx) : x;
    return activation(act, add(h, skip));
  }

 private:
  Conv2d conv1_;
  BatchNorm bn1_;
  Conv2d conv2_;
  BatchNorm bn2_;
  Conv2d conv3_;
  BatchNorm bn3_;
  bool projection_;
  Conv2d down_conv_;
  BatchNorm down_bn_;
};

class BottleneckResNet final : public Model {
 public:
  BottleneckResNet(int depth, Act act, int64_t classes, Init init)
      : Model("resnet-" + std::to_string(depth), act, classes) {
    const double mean[3] = {0.485, 0.456, 0.406}, stdev[3] = {0.229, 0.224, 0.225};
    for (int c = 0; c < 3; ++c) norm_mean_[c] = mean[c], norm_std_[c] = stdev[c];
    int blocks[4];
    if (depth == 50) blocks[0] = 3, blocks[1] = 4, blocks[2] = 6, blocks[3] = 3;
    else if (depth == 101) blocks[0] = 3, blocks[1] = 4, blocks[2] = 23, blocks[3] = 3;
    else blocks[0] = 3, blocks[1] = 8, blocks[2] = 36, blocks[3] = 3;
    conv1_ = Conv2d(registry_, "conv1", 3, 64, 7, 2, 3, init);
    bn1_ = BatchNorm(registry_, "bn1", 64, init);
    int64_t in = 64;
    for (int l = 0; l < 4; ++l) {
      int64_t width = 64 << l;
      for (int i = 0; i < blocks[l]; ++i) {
        blocks_.emplace_back(registry_, "layer" + std::to_string(l + 1) + "." + std::to_string(i), in, width,
                             (i == 0 && l > 0) ? 2 : 1, init);
        in = width * 4;
      }
    }
    fc_ = Linear(registry_, "fc", in, classes, init);
  }

  Tensor forward(const Tensor& x, ForwardContext& ctx) override {
    ctx.next = 0;
    Tensor h = bn1_.forward_act(conv1_.forward(normalize_input(x, ctx), ctx), ctx, act_);
    h = max_pool2d(h, 3, 2, 1);
    for (Bottleneck& b : blocks_) h = b.forward(h, ctx, act_);
    return fc_.forward(global_avg_pool(h), ctx);
  }

 private:
  Conv2d conv1_;
  BatchNorm bn1_;
  std::vector<Bottleneck> blocks_;
  Linear fc_;
};

}  // namespace

std::unique_ptr<Model> make_bottleneck_resnet(int depth, Act act, int64_t classes, Init init) {
  return std::make_unique<BottleneckResNet>(depth, act, classes, init);
}

}  // namespace llr::nets
