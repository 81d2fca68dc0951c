"""The sponsor's ERP over SOAP (zeep against the WSDL): sales orders, goods movements, status posts."""
