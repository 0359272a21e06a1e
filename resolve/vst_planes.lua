-- Fusion images <-> the wire protocol's raw float32 planes (docs/protocol.md, "Frames on the wire").
--
-- Fusion: pixel (0, 0) is the bottom-left pixel of the frame, which is img.Width x img.Height pixels;
-- img.DataWindow (the domain of definition) is {left, bottom, right, top} with right and top exclusive,
-- and may reach outside the frame (overscan). The wire: OpenEXR windows [xmin, ymin, xmax, ymax],
-- inclusive, y pointing down from the top of the display window; planes are rows top to bottom over
-- the data window. Only the documented Fuse calls are used: img:GetPixel / out:SetPixel with Pixel().

local ffi = require("ffi")

local M = {}

assert(ffi.abi("le"), "the vst wire protocol sends little-endian planes; this machine is big-endian")

--- The frame's EXR display window and data window for a Fusion image of `width` x `height` pixels
--- whose domain of definition is `dod` ({left, bottom, right, top}, right/top exclusive).
function M.windows(width, height, dod)
  local display = { 0, 0, width - 1, height - 1 }
  local data = { dod.left, height - dod.top, dod.right - 1, height - 1 - dod.bottom }
  return data, display
end

--- The image's domain of definition, the whole frame when the image has none.
function M.domain(img)
  local dod = img.DataWindow
  if dod == nil then
    return { left = 0, bottom = 0, right = img.Width, top = img.Height }
  end
  return { left = dod.left, bottom = dod.bottom, right = dod.right, top = dod.top }
end

--- Read the colour planes of `img` over `dod`: returns {R=, G=, B=[, A=]} float arrays (rows top to
--- bottom) and the pixel count. Alpha is read when the image's pixels carry it. `aborted()` is
--- polled once per row; it returns true to stop (the function then returns nil).
function M.read(img, dod, aborted)
  local width, height = dod.right - dod.left, dod.top - dod.bottom
  local count = width * height
  local p = Pixel()
  img:GetPixel(dod.left, dod.bottom, p)
  local with_alpha = type(p.A) == "number"
  local r, g, b = ffi.new("float[?]", count), ffi.new("float[?]", count), ffi.new("float[?]", count)
  local a = with_alpha and ffi.new("float[?]", count) or nil
  local i = 0
  for y = dod.top - 1, dod.bottom, -1 do
    if aborted and aborted() then
      return nil
    end
    for x = dod.left, dod.right - 1 do
      img:GetPixel(x, y, p)
      r[i], g[i], b[i] = p.R, p.G, p.B
      if a then
        a[i] = p.A
      end
      i = i + 1
    end
  end
  return { R = r, G = g, B = b, A = a }, count
end

--- Copy `img` into `out` over `dod`, the colour replaced by the planes in `colour` ({R=, G=, B=}
--- float pointers, rows top to bottom; a missing plane keeps the input's channel). Alpha and every
--- auxiliary channel are copied from the input pixel as they are. Returns false when aborted.
function M.write(img, out, dod, colour, aborted)
  local r, g, b = colour.R, colour.G, colour.B
  local p = Pixel()
  local i = 0
  for y = dod.top - 1, dod.bottom, -1 do
    if aborted and aborted() then
      return false
    end
    for x = dod.left, dod.right - 1 do
      img:GetPixel(x, y, p)
      if r then p.R = r[i] end
      if g then p.G = g[i] end
      if b then p.B = b[i] end
      out:SetPixel(x, y, p)
      i = i + 1
    end
  end
  return true
end

--- A received plane's bytes as floats (valid while its message is referenced).
function M.floats(pointer)
  return ffi.cast("const float *", pointer)
end

return M
