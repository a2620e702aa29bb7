#include "train/checkpoint.h"

#include <charconv>
#include <cstring>

#include "engine/backend.h"

namespace llr::ckpt {

namespace {

std::string st_dtype(DType t) {
  switch (t) {
    case DType::f32: return "F32";
    case DType::f64: return "F64";
    case DType::i32: return "I32";
    case DType::u8: return "U8";
    default: break;
  }
  LLR_FAIL("checkpoint: cannot store ", dtype_name(t), " tensors");
}

// Copies stored data into t (in place), converting OIHW back to KRSC for filters.
void from_stored(const io::StoredTensor& s, Tensor& t, bool conv_filter, const std::string& name,
                 const std::string& path) {
  LLR_CHECK(s.dtype == st_dtype(t.dtype()), "checkpoint ", path, ": tensor ", name, " is ", s.dtype, ", expected ",
            st_dtype(t.dtype()));
  Shape want = t.shape();
  if (conv_filter) want = {t.dim(0), t.dim(3), t.dim(1), t.dim(2)};
  LLR_CHECK(s.shape == want, "checkpoint ", path, ": tensor ", name, " has shape ", shape_str(s.shape), ", expected ",
            shape_str(want));
  Tensor h = Tensor::empty(t.shape(), t.dtype(), t.layout());
  size_t e = dtype_size(t.dtype());
  uint8_t* dst = static_cast<uint8_t*>(h.raw_data());
  if (!conv_filter) {
    std::memcpy(dst, s.bytes.data(), s.bytes.size());
  } else {
    int64_t K = t.dim(0), R = t.dim(1), S = t.dim(2), C = t.dim(3);
    for (int64_t k = 0; k < K; ++k)
      for (int64_t r = 0; r < R; ++r)
        for (int64_t q = 0; q < S; ++q)
          for (int64_t c = 0; c < C; ++c)
            std::memcpy(dst + (((k * R + r) * S + q) * C + c) * e, s.bytes.data() + (((k * C + c) * R + r) * S + q) * e,
                        e);
  }
  copy_into(t, h);
}

io::StoredTensor i64_scalar(int64_t v) {
  io::StoredTensor s;
  s.dtype = "I64";
  s.bytes.resize(8);
  std::memcpy(s.bytes.data(), &v, 8);
  return s;
}

}  // namespace

io::StoredTensor to_stored(const Tensor& t, bool conv_filter) {
  Tensor h = t.device() == Device::cpu ? t : t.to(Device::cpu);
  io::StoredTensor s;
  s.dtype = st_dtype(h.dtype());
  size_t e = dtype_size(h.dtype());
  s.bytes.resize(static_cast<size_t>(h.numel()) * e);
  const uint8_t* src = static_cast<const uint8_t*>(h.raw_data());
  if (!conv_filter) {
    s.shape = h.shape();
    std::memcpy(s.bytes.data(), src, s.bytes.size());
    return s;
  }
  int64_t K = h.dim(0), R = h.dim(1), S = h.dim(2), C = h.dim(3);
  s.shape = {K, C, R, S};
  for (int64_t k = 0; k < K; ++k)
    for (int64_t r = 0; r < R; ++r)
      for (int64_t q = 0; q < S; ++q)
        for (int64_t c = 0; c < C; ++c)
          std::memcpy(s.bytes.data() + (((k * C + c) * R + r) * S + q) * e, src + (((k * R + r) * S + q) * C + c) * e, e);
  return s;
}

void save_model(const std::string& path, nets::Model& model, const io::Metadata& extra) {
  io::TensorMap tensors;
  DType dtype = DType::f32;
  for (const nets::NamedTensor& e : model.registry().entries()) {
    tensors.emplace_back(e.name, to_stored(e.tensor, e.conv_filter));
    dtype = e.tensor.dtype();
  }
  for (auto& [name, counter] : model.registry().counters()) tensors.emplace_back(name, i64_scalar(*counter));
  io::Metadata meta = extra;
  meta["format"] = "llrtrain-model";
  meta["model"] = model.name();
  meta["act"] = nets::act_name(model.act());
  meta["classes"] = std::to_string(model.classes());
  meta["dtype"] = dtype_name(dtype);
  io::write_safetensors(path, tensors, meta);
}

int64_t metadata_int(const io::Metadata& meta, const std::string& key, const std::string& path) {
  auto it = meta.find(key);
  LLR_CHECK(it != meta.end(), "checkpoint ", path, " lacks metadata '", key, "'");
  const std::string& text = it->second;
  int64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  LLR_CHECK(ec == std::errc() && end == text.data() + text.size(), "checkpoint ", path, ": metadata '", key, "' is '",
            text, "', not a 64-bit integer");
  return value;
}

ModelInfo read_model_info(const std::string& path) {
  io::SafetensorsFile f = io::read_safetensors(path);
  auto get = [&](const char* key) {
    auto it = f.metadata.find(key);
    LLR_CHECK(it != f.metadata.end(), "checkpoint ", path, " lacks metadata '", key,
              "' (not written by llrtrain save_model)");
    return it->second;
  };
  ModelInfo info;
  info.model = get("model");
  std::string act = get("act");
  try {
    info.act = nets::parse_act(act);
  } catch (const Error&) {
    LLR_FAIL("checkpoint ", path, ": metadata 'act' is '", act, "', not an activation llrtrain knows");
  }
  // The model is built, its last layer `classes` wide, before any stored tensor is compared with it.
  const int64_t max_classes = 1'000'000;
  info.classes = metadata_int(f.metadata, "classes", path);
  LLR_CHECK(info.classes >= 1 && info.classes <= max_classes, "checkpoint ", path, ": metadata 'classes' is ",
            info.classes, ", not in 1..", max_classes);
  std::string dtype = get("dtype");
  LLR_CHECK(dtype == "f32" || dtype == "f64", "checkpoint ", path, ": metadata 'dtype' is '", dtype,
            "', not f32 or f64");
  info.dtype = dtype == "f64" ? DType::f64 : DType::f32;
  return info;
}

io::Metadata load_model(const std::string& path, nets::Model& model) {
  io::SafetensorsFile f = io::read_safetensors(path);
  size_t expected = model.registry().entries().size() + model.registry().counters().size();
  for (nets::NamedTensor& e : model.registry().entries()) {
    auto it = f.tensors.find(e.name);
    LLR_CHECK(it != f.tensors.end(), "checkpoint ", path, " lacks tensor ", e.name, " of ", model.name());
    from_stored(it->second, e.tensor, e.conv_filter, e.name, path);
  }
  for (auto& [name, counter] : model.registry().counters()) {
    auto it = f.tensors.find(name);
    LLR_CHECK(it != f.tensors.end() && it->second.dtype == "I64" && it->second.bytes.size() == 8, "checkpoint ", path,
              " lacks the I64 scalar ", name);
    std::memcpy(counter, it->second.bytes.data(), 8);
  }
  LLR_CHECK(f.tensors.size() == expected, "checkpoint ", path, " has ", f.tensors.size(), " tensors, ", model.name(),
            " has ", expected);
  return f.metadata;
}

void save_train_state(const std::string& path, const Sgd& opt, const nets::Model& model, const io::Metadata& meta) {
  io::TensorMap tensors;
  const auto& bufs = opt.momentum_buffers();
  size_t k = 0;
  for (const nets::NamedTensor& e : const_cast<nets::Model&>(model).registry().entries()) {
    if (e.kind == nets::TensorKind::buffer) continue;
    tensors.emplace_back("momentum." + e.name, to_stored(bufs.at(k++), e.conv_filter));
  }
  io::Metadata m = meta;
  m["format"] = "llrtrain-train-state";
  m["optimizer_steps"] = std::to_string(opt.steps_taken());
  io::write_safetensors(path, tensors, m);
}

io::Metadata load_train_state(const std::string& path, Sgd& opt, const nets::Model& model) {
  io::SafetensorsFile f = io::read_safetensors(path);
  auto& bufs = opt.momentum_buffers();
  size_t k = 0;
  for (const nets::NamedTensor& e : const_cast<nets::Model&>(model).registry().entries()) {
    if (e.kind == nets::TensorKind::buffer) continue;
    std::string name = "momentum." + e.name;
    auto it = f.tensors.find(name);
    LLR_CHECK(it != f.tensors.end(), "training state ", path, " lacks ", name);
    from_stored(it->second, bufs.at(k++), e.conv_filter, name, path);
  }
  LLR_CHECK(f.tensors.size() == k, "training state ", path, " holds ", f.tensors.size(), " tensors, ", model.name(),
            " has ", k, " momentum buffers: it is not this model's training state");
  int64_t steps = metadata_int(f.metadata, "optimizer_steps", path);
  LLR_CHECK(steps >= 0, "training state ", path, ": metadata 'optimizer_steps' is negative (", steps, ")");
  opt.set_steps_taken(steps);
  return f.metadata;
}

}  // namespace llr::ckpt
