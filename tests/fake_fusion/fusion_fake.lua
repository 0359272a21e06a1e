-- A fake of exactly the Fusion Fuse API calls the vst Fuse makes (listed in tests/test_resolve_fuse.py),
-- following the Fuse SDK: pixel (0, 0) is bottom-left, DataWindow {left, bottom, right, top} has
-- right/top exclusive, GetPixel/SetPixel must stay inside the DataWindow, an image made with IMG_Like
-- is not cleared (here: filled with NaN, so an unwritten pixel shows).
local ffi = require("ffi")

local fake = { console = {}, outputs = {}, status_log = {} }

CT_Tool = "CT_Tool"

function FuRegisterClass(name, class_type, attributes)
  fake.registered = { name = name, class_type = class_type, attributes = attributes }
end

function print(...)
  local parts = {}
  for i = 1, select("#", ...) do
    parts[#parts + 1] = tostring(select(i, ...))
  end
  fake.console[#fake.console + 1] = table.concat(parts, "\t")
end

function Pixel(values)
  local p = {}
  for key, value in pairs(values or {}) do
    p[key] = value
  end
  return p
end

function Text(value)
  return { Value = value }
end

-- images --------------------------------------------------------------------------------------

local ImageMethods = {}
local ImageMeta = { __index = ImageMethods }

local function check_inside(img, x, y)
  local dod = img.DataWindow
  assert(not img.NoData, "pixel access on an IMG_NoData image")
  assert(x == math.floor(x) and y == math.floor(y), "pixel coordinates must be integers")
  assert(x >= dod.left and x < dod.right and y >= dod.bottom and y < dod.top,
    string.format("pixel (%d, %d) outside the DataWindow %d %d %d %d", x, y, dod.left, dod.bottom, dod.right, dod.top))
  return (y - dod.bottom) * (dod.right - dod.left) + (x - dod.left)
end

function ImageMethods:GetPixel(x, y, p)
  local i = check_inside(self, x, y)
  for _, name in ipairs(self.channels) do
    p[name] = self.planes[name][i]
  end
  fake.pixel_reads = (fake.pixel_reads or 0) + 1
end

function ImageMethods:SetPixel(x, y, p)
  local i = check_inside(self, x, y)
  for _, name in ipairs(self.channels) do
    assert(type(p[name]) == "number", "SetPixel: the pixel has no value for " .. name)
    self.planes[name][i] = p[name]
  end
end

function Image(attributes)
  local like = attributes.IMG_Like or {}
  local img = setmetatable({}, ImageMeta)
  img.Width = attributes.IMG_Width or like.Width
  img.Height = attributes.IMG_Height or like.Height
  img.Depth = attributes.IMG_Depth or like.Depth or 8
  local dod = attributes.IMG_DataWindow or like.DataWindow
    or { left = 0, bottom = 0, right = img.Width, top = img.Height }
  img.DataWindow = { left = dod.left, bottom = dod.bottom, right = dod.right, top = dod.top }
  img.channels = {}
  for _, name in ipairs(attributes.channels or like.channels or { "R", "G", "B", "A" }) do
    img.channels[#img.channels + 1] = name
  end
  img.NoData = attributes.IMG_NoData and true or false
  img.planes = {}
  if not img.NoData then
    local count = (img.DataWindow.right - img.DataWindow.left) * (img.DataWindow.top - img.DataWindow.bottom)
    for _, name in ipairs(img.channels) do
      local plane = ffi.new("float[?]", math.max(count, 1))
      for i = 0, count - 1 do
        plane[i] = 0 / 0
      end
      img.planes[name] = plane
    end
  end
  return img
end

-- test helpers (not Fuse API): an image from bottom-up float32 rows, and a plane back as bytes
function fake.image(width, height, left, bottom, right, top, names, data)
  local img = Image({ IMG_Width = width, IMG_Height = height, channels = names,
    IMG_DataWindow = { left = left, bottom = bottom, right = right, top = top } })
  local count = (right - left) * (top - bottom)
  for _, name in ipairs(names) do
    ffi.copy(img.planes[name], data[name], count * 4)
  end
  return img
end

function fake.plane(img, name)
  local dod = img.DataWindow
  return ffi.string(img.planes[name], (dod.right - dod.left) * (dod.top - dod.bottom) * 4)
end

-- the tool: inputs, outputs, requests --------------------------------------------------------

local InputMethods = {}
local InputMeta = { __index = InputMethods }

function InputMethods:GetValue(req)
  local attrs = self.attrs
  if attrs.LINKID_DataType == "Image" then
    return self.image
  elseif attrs.LINKID_DataType == "Text" then
    return { Value = self.value or attrs.INPS_DefaultText or "" }
  end
  return { Value = self.value or attrs.INP_Default or 0 }
end

function InputMethods:SetAttrs(attrs)
  for key, value in pairs(attrs) do
    self.attrs[key] = value
  end
  if attrs.LINKS_Name then
    fake.status_log[#fake.status_log + 1] = attrs.LINKS_Name
  end
end

function InputMethods:SetSource(param, time)
  self.value = param.Value
end

local OutputMethods = {}
local OutputMeta = { __index = OutputMethods }

function OutputMethods:Set(req, img)
  fake.outputs[#fake.outputs + 1] = { time = req.Time, image = img or false }
end

fake.inputs = {}
self = {
  Status = "OK",
  AddInput = function(tool, label, id, attrs)
    local input = setmetatable({ label = label, id = id, attrs = attrs }, InputMeta)
    fake.inputs[id] = input
    return input
  end,
  AddOutput = function(tool, label, id, attrs)
    return setmetatable({ label = label, id = id, attrs = attrs }, OutputMeta)
  end,
}

function fake.request(time, precalc)
  return { Time = time, IsPreCalc = function(req) return precalc end }
end

return fake
