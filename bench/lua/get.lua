-- GET the URL's path as it is (the ceiling, a fixed list page).
require "common"
