-- msgpack for the vst wire protocol's headers (docs/protocol.md), in plain Lua 5.1 / LuaJIT.
--
-- encode(value) -> string; decode(string) -> value. Lua tables become msgpack arrays when their keys
-- are exactly 1..n (n >= 1) and maps otherwise; `array(t)` marks a table (even an empty one) as an
-- array. Integral numbers within +-2^53 encode as integers, other numbers as float64. Strings encode
-- as msgpack str; `binary(s)` marks a string as msgpack bin (raw bytes, such as a file's). Decoding accepts every msgpack type except ext; bin decodes to a string, nil to
-- `nil` (in a map the key is then absent, as Lua tables cannot hold nil).

local M = {}

local byte, char, concat = string.byte, string.char, table.concat
local floor, frexp, ldexp, huge = math.floor, math.frexp, math.ldexp, math.huge

local ARRAY = setmetatable({}, { __mode = "k" })

--- Mark `t` as a msgpack array (needed for an empty list) and return it.
function M.array(t)
  t = t or {}
  ARRAY[t] = true
  return t
end

local function uint_bytes(value, count)
  local out = {}
  for i = count, 1, -1 do
    out[i] = char(value % 256)
    value = floor(value / 256)
  end
  return concat(out)
end

local function float64_bytes(value)
  if value ~= value then
    return "\127\248\0\0\0\0\0\0"
  end
  local sign = 0
  if value < 0 or (value == 0 and 1 / value < 0) then
    sign, value = 128, -value
  end
  if value == huge then
    return char(sign + 127, 240, 0, 0, 0, 0, 0, 0)
  end
  if value == 0 then
    return char(sign, 0, 0, 0, 0, 0, 0, 0)
  end
  local mantissa, exponent = frexp(value) -- value = mantissa * 2^exponent, 0.5 <= mantissa < 1
  exponent = exponent + 1022
  if exponent <= 0 then -- subnormal
    mantissa = ldexp(mantissa, exponent + 52)
    exponent = 0
  else
    mantissa = (mantissa * 2 - 1) * 2 ^ 52
  end
  local low = mantissa % 2 ^ 32
  local high = floor(mantissa / 2 ^ 32)
  return char(sign + floor(exponent / 16), (exponent % 16) * 16 + floor(high / 65536))
    .. uint_bytes(high % 65536, 2) .. uint_bytes(low, 4)
end

local function is_array(t)
  if ARRAY[t] then
    return true
  end
  local count = 0
  for _ in pairs(t) do
    count = count + 1
  end
  if count == 0 then
    return false
  end
  for i = 1, count do
    if t[i] == nil then
      return false
    end
  end
  return true
end

local encode_into

local function encode_length(out, length, fix, fixmax, code16, code32)
  if length <= fixmax then
    out[#out + 1] = char(fix + length)
  elseif length < 65536 then
    out[#out + 1] = char(code16) .. uint_bytes(length, 2)
  else
    out[#out + 1] = char(code32) .. uint_bytes(length, 4)
  end
end

local function encode_integer(out, value)
  if value >= 0 then
    if value < 128 then
      out[#out + 1] = char(value)
    elseif value < 256 then
      out[#out + 1] = "\204" .. char(value)
    elseif value < 65536 then
      out[#out + 1] = "\205" .. uint_bytes(value, 2)
    elseif value < 2 ^ 32 then
      out[#out + 1] = "\206" .. uint_bytes(value, 4)
    else
      out[#out + 1] = "\207" .. uint_bytes(value, 8)
    end
  elseif value >= -32 then
    out[#out + 1] = char(256 + value)
  elseif value >= -128 then
    out[#out + 1] = "\208" .. char(256 + value)
  elseif value >= -32768 then
    out[#out + 1] = "\209" .. uint_bytes(65536 + value, 2)
  elseif value >= -2 ^ 31 then
    out[#out + 1] = "\210" .. uint_bytes(2 ^ 32 + value, 4)
  else -- two's complement over 64 bits, in two exact halves
    local high = floor(value / 2 ^ 32)
    out[#out + 1] = "\211" .. uint_bytes(high + 2 ^ 32, 4) .. uint_bytes(value - high * 2 ^ 32, 4)
  end
end

local BINARY = {}

--- Mark a Lua string as raw bytes (msgpack bin, such as a file's contents) instead of text (str).
function M.binary(data)
  return setmetatable({ data = data }, BINARY)
end

encode_into = function(out, value)
  local kind = type(value)
  if kind == "table" and getmetatable(value) == BINARY then
    local length = #value.data
    if length < 256 then
      out[#out + 1] = "\196" .. char(length)
    else
      encode_length(out, length, 0, -1, 197, 198)
    end
    out[#out + 1] = value.data
  elseif value == nil then
    out[#out + 1] = "\192"
  elseif kind == "boolean" then
    out[#out + 1] = value and "\195" or "\194"
  elseif kind == "number" then
    if value == floor(value) and value >= -2 ^ 53 and value <= 2 ^ 53 then
      encode_integer(out, value)
    else
      out[#out + 1] = "\203" .. float64_bytes(value)
    end
  elseif kind == "string" then
    local length = #value
    if length < 32 then
      out[#out + 1] = char(160 + length)
    elseif length < 256 then
      out[#out + 1] = "\217" .. char(length)
    else
      encode_length(out, length, 0, -1, 218, 219)
    end
    out[#out + 1] = value
  elseif kind == "table" then
    if is_array(value) then
      local count = #value
      encode_length(out, count, 144, 15, 220, 221)
      for i = 1, count do
        encode_into(out, value[i])
      end
    else
      local keys = {}
      for key in pairs(value) do
        keys[#keys + 1] = key
      end
      table.sort(keys, function(a, b)
        return tostring(a) < tostring(b)
      end)
      encode_length(out, #keys, 128, 15, 222, 223)
      for _, key in ipairs(keys) do
        encode_into(out, key)
        encode_into(out, value[key])
      end
    end
  else
    error("msgpack: cannot encode a " .. kind, 0)
  end
end

--- Encode a Lua value as msgpack bytes.
function M.encode(value)
  local out = {}
  encode_into(out, value)
  return concat(out)
end

-- decoding ------------------------------------------------------------------------------------

local function need(data, position, count)
  if position + count - 1 > #data then
    error("msgpack: truncated data", 0)
  end
end

local function read_uint(data, position, count)
  need(data, position, count)
  local value = 0
  for i = position, position + count - 1 do
    value = value * 256 + byte(data, i)
  end
  return value, position + count
end

local function read_int(data, position, count)
  if count == 8 then -- high half signed, low half unsigned: exact up to 2^53
    local high = read_int(data, position, 4)
    local low = read_uint(data, position + 4, 4)
    return high * 2 ^ 32 + low, position + 8
  end
  local value, next_position = read_uint(data, position, count)
  if value >= 2 ^ (8 * count - 1) then
    value = value - 2 ^ (8 * count)
  end
  return value, next_position
end

local function read_float(data, position, count)
  need(data, position, count)
  local b1, b2 = byte(data, position, position + 1)
  local sign = b1 >= 128 and -1 or 1
  local exponent, mantissa, bias, bits
  if count == 4 then
    exponent = (b1 % 128) * 2 + floor(b2 / 128)
    mantissa = read_uint(data, position + 1, 3) % 2 ^ 23
    bias, bits, count = 127, 23, 4
    if exponent == 255 then
      return (mantissa == 0 and sign * huge or 0 / 0), position + 4
    end
  else
    exponent = (b1 % 128) * 16 + floor(b2 / 16)
    local high = read_uint(data, position + 1, 3) % 2 ^ 20
    mantissa = high * 2 ^ 32 + read_uint(data, position + 4, 4)
    bias, bits = 1023, 52
    if exponent == 2047 then
      return (mantissa == 0 and sign * huge or 0 / 0), position + 8
    end
  end
  local value
  if exponent == 0 then
    value = ldexp(mantissa, 1 - bias - bits)
  else
    value = ldexp(mantissa + 2 ^ bits, exponent - bias - bits)
  end
  return sign * value, position + count
end

local decode_at

local function read_string(data, position, length)
  need(data, position, length)
  return data:sub(position, position + length - 1), position + length
end

local function read_array(data, position, count)
  local out = M.array({})
  for i = 1, count do
    out[i], position = decode_at(data, position)
  end
  return out, position
end

local function read_map(data, position, count)
  local out, key = {}, nil
  for _ = 1, count do
    key, position = decode_at(data, position)
    if key == nil then
      error("msgpack: nil map key", 0)
    end
    out[key], position = decode_at(data, position)
  end
  return out, position
end

decode_at = function(data, position)
  need(data, position, 1)
  local code = byte(data, position)
  position = position + 1
  if code < 128 then
    return code, position
  elseif code < 144 then
    return read_map(data, position, code - 128)
  elseif code < 160 then
    return read_array(data, position, code - 144)
  elseif code < 192 then
    return read_string(data, position, code - 160)
  elseif code >= 224 then
    return code - 256, position
  elseif code == 192 then
    return nil, position
  elseif code == 194 then
    return false, position
  elseif code == 195 then
    return true, position
  elseif code >= 196 and code <= 198 then -- bin 8/16/32
    local length
    length, position = read_uint(data, position, 2 ^ (code - 196))
    return read_string(data, position, length)
  elseif code == 202 then
    return read_float(data, position, 4)
  elseif code == 203 then
    return read_float(data, position, 8)
  elseif code >= 204 and code <= 207 then
    return read_uint(data, position, 2 ^ (code - 204))
  elseif code >= 208 and code <= 211 then
    return read_int(data, position, 2 ^ (code - 208))
  elseif code >= 217 and code <= 219 then -- str 8/16/32
    local length
    length, position = read_uint(data, position, 2 ^ (code - 217))
    return read_string(data, position, length)
  elseif code == 220 or code == 221 then
    local count
    count, position = read_uint(data, position, code == 220 and 2 or 4)
    return read_array(data, position, count)
  elseif code == 222 or code == 223 then
    local count
    count, position = read_uint(data, position, code == 222 and 2 or 4)
    return read_map(data, position, count)
  end
  error(string.format("msgpack: unsupported type byte 0x%02x", code), 0)
end

--- Decode one msgpack value that fills `data` exactly; raises an error string otherwise.
function M.decode(data)
  local value, position = decode_at(data, 1)
  if position ~= #data + 1 then
    error("msgpack: trailing bytes after the value", 0)
  end
  return value
end

return M
