/*
 * torchzip.h - read PyTorch zip checkpoints (`pytorch_model.bin`, written by
 * torch.save since PyTorch 1.6) without Python, as safetensors-style sets.
 *
 * A torch zip holds `<top>/data.pkl` (a pickle of the state dict), one record
 * `<top>/data/<key>` per storage, `<top>/version` and maybe `<top>/byteorder`;
 * the top folder's name varies.  Records are stored uncompressed and 64-byte
 * aligned, so they are mapped straight from the file: a tensor's data points
 * into the mapping, like a safetensors tensor.  A compressed record (not
 * written by torch, but legal zip) is read into memory instead.  Every
 * record's CRC-32 is checked when the file is opened (one pass over the
 * bytes, ~6 GB/s with zlib): a corrupt download is an error naming the
 * record.  A CRC field of 0 means none was recorded (torch.save can be told
 * not to compute them, and torch.load does not check) and is not checked.
 *
 * data.pkl is read by a pickle reader for exactly what torch.save writes
 * (protocols 2 and 4): plain values, tuples, lists and dicts, the memo, and
 * REDUCE/BUILD only on a whitelist of globals (collections.OrderedDict,
 * torch._utils._rebuild_tensor_v2, _rebuild_tensor and _rebuild_parameter,
 * the torch.<Dtype>Storage classes).  Nothing is ever executed.  Any other
 * global (os.system, builtins.eval, torch.storage._load_from_bytes), any
 * other opcode, a persistent id that does not name a storage record of the
 * archive, a truncated pickle, a tensor reaching past its storage or with
 * non-contiguous strides: each is an error naming what is wrong and the byte
 * offset in data.pkl.  The stack, the memo and the number of objects are
 * bounded.  The legacy format (a bare pickle stream, before PyTorch 1.6) is
 * refused with a message saying how to convert it.
 *
 * The result is an st_file (safetensors.h), so every consumer of tensor sets
 * reads both formats:
 *
 *     struct st_set *set = NULL;
 *     if (torchzip_set_open(&set, "step1000", &e) < 0) ...  // pytorch_model.bin
 *     const struct st_tensor *t = st_set_find(set, "embed_out.weight");
 *     st_set_free(set);
 *
 * libzip reads the archive (central directory, consistency, member reads
 * with CRC checks); the one thing hand-written is finding where a stored
 * member's bytes start, which libzip's API does not tell: the local header
 * offset from the central directory, plus the local header's length.
 */
#ifndef CKPTD_TORCHZIP_H
#define CKPTD_TORCHZIP_H

#include "common/err.h"
#include "workers/model/safetensors.h"

#define TZ_SINGLE_NAME "pytorch_model.bin"
#define TZ_INDEX_NAME "pytorch_model.bin.index.json"

/* Bounds on what a data.pkl may make the reader hold. */
#define TZ_MAX_PICKLE (64u << 20) /* bytes of data.pkl */
#define TZ_MAX_STACK (1u << 20)   /* values on the stack */
#define TZ_MAX_MARKS 4096u        /* nested MARKs */
#define TZ_MAX_MEMO (1u << 20)    /* memo slots */
#define TZ_MAX_OBJECTS (1u << 22) /* values built in all */

/* Open one torch zip file as an st_file: the top-level object of data.pkl
 * must be a dict (OrderedDict) of string keys to tensors; tensors keep its
 * order.  ERR_NOTFOUND if the file does not exist, ERR_IO if it cannot be
 * read, ERR_UNSUPPORTED for the legacy format, a refused global or opcode, a
 * big-endian file or an unknown storage type, ERR_FORMAT for everything
 * malformed.  On failure *out is NULL and `e` names the file (and the
 * opcode, global, record or tensor, with its byte offset in data.pkl).
 * Caller frees with st_free. */
int torchzip_open(struct st_file **out, const char *path, struct err *e) CK_WUR;

/* Open a checkpoint directory's pytorch_model.bin, or the shards named by
 * pytorch_model.bin.index.json ("weight_map", as for safetensors).
 * ERR_NOTFOUND if neither exists.  Caller frees with st_set_free. */
int torchzip_set_open(struct st_set **out, const char *dir, struct err *e) CK_WUR;

#endif
